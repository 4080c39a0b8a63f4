//! Small blocking probes: is a TCP port open, what does an HTTP GET answer.
//!
//! For supervisors (`mmctl`) and tests that wait for a server to come up. They speak
//! HTTP/1.0 with `Connection: close`, enough for `/healthz` and `/metrics`, and every
//! call is bounded by a timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to nothing")))
}

/// Does something accept TCP connections on `addr` (`host:port`)?
pub fn tcp_open(addr: &str, timeout: Duration) -> bool {
    resolve(addr).and_then(|addr| TcpStream::connect_timeout(&addr, timeout)).is_ok()
}

/// `GET http://{addr}{path}`, bounded by `timeout` in all.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> io::Result<HttpAnswer> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "HTTP probe timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&resolve(addr)?, remaining()?)?;
    stream.set_write_timeout(Some(remaining()?))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(remaining()?))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => raw.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpAnswer> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no end of HTTP headers"))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    Ok(HttpAnswer { status, body: body.to_owned() })
}

/// Calls `ready` every `interval` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, interval: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_status_and_body() {
        let answer = parse_response(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")
            .expect("parses");
        assert_eq!(answer, HttpAnswer { status: 503, body: "no".into() });
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn get_against_a_tiny_server_and_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).expect("read");
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(String::from_utf8_lossy(&request).starts_with("GET /healthz HTTP/1.0\r\n"));
            socket.write_all(b"HTTP/1.0 200 OK\r\n\r\nok").expect("write");
        });
        let answer = http_get(&addr, "/healthz", Duration::from_secs(5)).expect("get");
        assert_eq!(answer, HttpAnswer { status: 200, body: "ok".into() });
        server.join().expect("server thread");
        // The listener is gone now, so the port is closed.
        assert!(!tcp_open(&addr, Duration::from_millis(200)));
        assert!(http_get(&addr, "/", Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_silent_server_cannot_hang_the_probe() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let started = Instant::now();
        let result = http_get(&addr, "/", Duration::from_millis(300));
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
