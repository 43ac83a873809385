//! A tiny DNS server on 127.0.0.1 (UDP, OS-assigned port) for tests that point a gateway's
//! resolver at it: it answers `A` queries for the names it was given with their addresses, in
//! the order given, an empty answer for their other record types, and `NXDOMAIN` for any other
//! name. Only loopback addresses are ever handed out by the tests that use it.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::HarnessError;

/// TTL of every answer, in seconds.
pub const TTL: u32 = 30;

/// Queries answered at most, so the server thread always ends.
const MAX_QUERIES: usize = 10_000;

/// A running server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    /// Starts a server answering `names` (lower-case, no trailing dot) with their addresses.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(names: Vec<(String, Vec<Ipv4Addr>)>) -> Result<DnsServer, HarnessError> {
        let socket =
            UdpSocket::bind("127.0.0.1:0").map_err(|e| HarnessError::io("bind dns server", e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| HarnessError::io("dns server address", e))?;
        // Bounds each wait for a query so the thread sees `stop`.
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| HarnessError::io("dns server timeout", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (thread_stop, thread_queries) = (stop.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !thread_stop.load(Ordering::Relaxed)
                && thread_queries.load(Ordering::Relaxed) < MAX_QUERIES
            {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                thread_queries.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = answer(&buf[..len], &names) {
                    socket.send_to(&reply, peer).ok();
                }
            }
        });
        Ok(DnsServer {
            addr,
            stop,
            queries,
        })
    }

    /// Where the server listens (127.0.0.1, UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reply to the DNS message `query`, or `None` for anything that is not one question.
pub fn answer(query: &[u8], names: &[(String, Vec<Ipv4Addr>)]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let found = names.iter().find(|(n, _)| *n == name).map(|(_, a)| a);
    let addresses: &[Ipv4Addr] = match (found, qtype) {
        (Some(addresses), 1) => addresses,
        _ => &[],
    };
    let mut reply = Vec::with_capacity(question_end + addresses.len() * 16);
    reply.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied; RA; NOERROR or NXDOMAIN.
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(if found.is_some() { 0x80 } else { 0x83 });
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for address in addresses {
        // The question's name (a pointer to offset 12), A, IN, TTL, 4 bytes.
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        reply.extend_from_slice(&TTL.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn answers_its_names_in_order_and_nothing_else() {
        let names = vec![(
            "multi.test".to_owned(),
            vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
        )];
        let reply = answer(&query("Multi.Test", 1), &names).expect("reply");
        assert_eq!(&reply[0..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 2);
        let question_len = query("multi.test", 1).len();
        let first = question_len + 12;
        assert_eq!(&reply[first..first + 4], &[127, 0, 0, 2]);
        assert_eq!(&reply[first + 16..first + 20], &[127, 0, 0, 3]);
        let aaaa = answer(&query("multi.test", 28), &names).expect("reply");
        assert_eq!((aaaa[3] & 0x0f, aaaa[7]), (0, 0), "no AAAA records");
        let other = answer(&query("other.test", 1), &names).expect("reply");
        assert_eq!(other[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(answer(&[0u8; 5], &names), None);
    }

    #[test]
    fn serves_over_udp() {
        let server = DnsServer::start(vec![("a.test".to_owned(), vec![Ipv4Addr::LOCALHOST])])
            .expect("start");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client
            .send_to(&query("a.test", 1), server.addr())
            .expect("send");
        let mut buf = [0u8; 512];
        let (len, _) = client.recv_from(&mut buf).expect("reply");
        assert_eq!(&buf[len - 4..len], &[127, 0, 0, 1]);
        assert_eq!(server.queries(), 1);
    }
}
