//! Reading a gateway's access log out of its process log, for both runtimes' tests (README:
//! Operating, Access log): the JSON lines, one by one, and a text line by its request id. Both
//! poll (bounded) since a line is written after its response went out (Envoy flushes its log
//! about once a second).

use std::time::{Duration, Instant};

use serde_json::Value;

/// Pause between two reads of the log.
const POLL: Duration = Duration::from_millis(50);

/// Every JSON access log line in what `log` returns (lines starting with `{`), each parsed,
/// once there are at least `count` or `within` has passed.
///
/// # Panics
/// A line starting with `{` that is not JSON: the log must hold one object per line.
pub fn json_lines(log: impl Fn() -> String, count: usize, within: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let lines: Vec<Value> = log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        if lines.len() >= count || started.elapsed() > within {
            return lines;
        }
        std::thread::sleep(POLL);
    }
}

/// The one line of `lines` whose `request_id` is `id`.
///
/// # Panics
/// No line has that id.
pub fn by_id<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line with request_id {id} in {lines:#?}"))
}

/// The first `text` access log line of request `id` in what `log` returns, waiting at most
/// `within`.
///
/// # Panics
/// No such line in time.
pub fn text_line(log: impl Fn() -> String, id: &str, within: Duration) -> String {
    let needle = format!("request_id={id} ");
    let started = Instant::now();
    loop {
        let text = log();
        if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
            return line.to_owned();
        }
        assert!(
            started.elapsed() < within,
            "no text line of {id} within {within:?}:\n{text}"
        );
        std::thread::sleep(POLL);
    }
}

/// Checks the fields every text line of a forwarded request of source `web.assets` on host
/// `gw.test` from the loopback client holds, in order, with `origin_host` and `bytes_sent`.
///
/// # Panics
/// A field is missing or different.
pub fn assert_forwarded_text_line(line: &str, origin_host: &str, bytes_sent: usize) {
    assert!(line.starts_with("ts="), "{line}");
    for part in [
        " client_ip=127.0.0.1 ",
        " method=GET host=gw.test source=web.assets outcome=forwarded status=200 ",
        &format!(" origin_host={origin_host} "),
        &format!(" bytes_sent={bytes_sent} "),
        " cache=-",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
}
