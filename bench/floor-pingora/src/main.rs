//! The floor of the native runtime in `bench/`: a bare Pingora 0.9 proxy that sends every
//! request to one fixed peer and adds one request header, with the allocator and thread count
//! of `ixproxy serve`. `ixproxy serve` minus this is what ixproxy's own work costs.
//!
//! `floor-pingora LISTEN PEER THREADS`, e.g. `floor-pingora 127.0.0.1:18087 127.0.0.1:18081 1`.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    peer: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // A socket address, never a name: Pingora would resolve a name on every request.
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream_request.insert_header("x-bench-floor", "1")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, peer, threads] = args.as_slice() else {
        eprintln!("usage: floor-pingora LISTEN PEER THREADS");
        return ExitCode::from(2);
    };
    let (Ok(peer), Ok(threads)) = (peer.parse::<SocketAddr>(), threads.parse::<usize>()) else {
        eprintln!("floor-pingora: PEER is an ip:port, THREADS a number");
        return ExitCode::from(2);
    };
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Floor { peer });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    eprintln!("floor-pingora: on {listen} to {peer}, {threads} threads");
    server.run_forever()
}
