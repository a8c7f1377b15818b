//! A fault-injecting HTTP proxy for the object-store tests: it listens on
//! 127.0.0.1 and forwards each request to an S3 server (moto_server on
//! loopback), unless a rule says otherwise:
//!
//! - [`Fault::Status`]: answer with an error status (500, 503, ...) without
//!   forwarding;
//! - [`Fault::Hang`]: accept the request and never answer;
//! - [`Fault::DropReply`]: forward the request, let the server act on it,
//!   and close the connection instead of passing its answer on;
//! - [`Fault::Throttle`]: forward, and pass the answer on at a bounded rate.
//!
//! Rules match a method (or any) and a substring of the request target, and
//! apply a number of times or always; the first rule that matches wins.
//! Plain threads and blocking sockets, one connection per request (both
//! sides are told `Connection: close`), so what happens is deterministic.
//! It also counts the bytes it sends back to the client.
#![allow(dead_code, unreachable_pub)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and an S3-style error body), not forwarded.
    Status(u16),
    /// Read the request, never answer (the connection stays open).
    Hang,
    /// Forward the request, read the server's answer, close the connection
    /// without passing the answer on.
    DropReply,
    /// Forward, and pass the answer on at this many bytes per second.
    Throttle(u64),
}

#[derive(Debug)]
struct Rule {
    method: Option<String>,
    target: String,
    fault: Fault,
    /// `None`: always.
    times: Option<usize>,
    hits: usize,
}

/// One request the proxy saw: method, target, and what it did.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub fault: Option<Fault>,
}

struct State {
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    bytes_out: AtomicU64,
    stop: AtomicBool,
}

/// The proxy; stops (and lets hung connections go) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let host = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let upstream: SocketAddr = host.parse().expect("upstream must be http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            bytes_out: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&state);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        FaultProxy { addr, state }
    }

    /// The proxy's endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule: requests with `method` (`None`: any) whose target
    /// contains `target` get `fault`, `times` times (`None`: always).
    pub fn rule(&self, method: Option<&str>, target: &str, fault: Fault, times: Option<usize>) {
        self.state.rules.lock().unwrap().push(Rule {
            method: method.map(str::to_string),
            target: target.to_string(),
            fault,
            times,
            hits: 0,
        });
    }

    /// Every request hangs from now on.
    pub fn hang_all(&self) {
        self.rule(None, "", Fault::Hang, None);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// How many requests a rule (by its position) caught.
    pub fn hits(&self, index: usize) -> usize {
        self.state.rules.lock().unwrap()[index].hits
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Bytes sent back to clients (heads and bodies) so far.
    pub fn bytes_out(&self) -> u64 {
        self.state.bytes_out.load(Ordering::SeqCst)
    }

    /// Resets the byte count and the log of requests.
    pub fn reset_counts(&self) {
        self.state.bytes_out.store(0, Ordering::SeqCst);
        self.state.seen.lock().unwrap().clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads an HTTP head (up to the blank line): the lines, without CRLF.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "head cut short",
                ))
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

/// The head with `Connection: close`, ready to send.
fn rewrite(lines: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let lower = l.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("connection:") || lower.starts_with("keep-alive:")) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn content_length(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn pick(state: &State, method: &str, target: &str) -> Option<Fault> {
    let mut rules = state.rules.lock().unwrap();
    for r in rules.iter_mut() {
        let method_ok = r.method.as_deref().is_none_or(|m| m == method);
        let left = r.times.is_none_or(|n| r.hits < n);
        if method_ok && left && target.contains(&r.target) {
            r.hits += 1;
            return Some(r.fault);
        }
    }
    None
}

fn serve(state: &State, client: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut parts = head[0].split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut body = vec![0; content_length(&head) as usize];
    reader.read_exact(&mut body)?;
    let fault = pick(state, &method, &target);
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        fault,
    });
    let mut client = client;
    match fault {
        Some(Fault::Hang) => {
            while !state.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            return Ok(());
        }
        Some(Fault::Status(code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InjectedFault</Code>\
                 <Message>fault proxy: {code}</Message></Error>"
            );
            let reply = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(reply.as_bytes())?;
            state
                .bytes_out
                .fetch_add(reply.len() as u64, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        _ => {}
    }
    let mut up = TcpStream::connect(state.upstream)?;
    up.write_all(&rewrite(&head))?;
    up.write_all(&body)?;
    let mut up_reader = BufReader::new(up);
    let Some(reply_head) = read_head(&mut up_reader)? else {
        return Ok(());
    };
    if fault == Some(Fault::DropReply) {
        // The server acted on the request; its answer is lost.
        let mut sink = Vec::new();
        let _ = up_reader.read_to_end(&mut sink);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let is_head = method == "HEAD";
    let len = content_length(&reply_head);
    let out = rewrite(&reply_head);
    client.write_all(&out)?;
    state
        .bytes_out
        .fetch_add(out.len() as u64, Ordering::SeqCst);
    let rate = match fault {
        Some(Fault::Throttle(r)) => Some(r.max(1)),
        _ => None,
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0; 16 * 1024];
    let mut left = if is_head { 0 } else { len };
    let has_length = reply_head
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("content-length:"));
    while !has_length || left > 0 {
        let want = if has_length {
            buf.len().min(left as usize)
        } else {
            buf.len()
        };
        let n = up_reader.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        client.write_all(&buf[..n])?;
        state.bytes_out.fetch_add(n as u64, Ordering::SeqCst);
        sent += n as u64;
        left = left.saturating_sub(n as u64);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                thread::sleep(due - elapsed);
            }
        }
    }
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
