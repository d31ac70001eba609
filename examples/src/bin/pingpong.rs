//! `pingpong`: a latency tool. One message in flight between a client and an echo server:
//! prints the round-trip percentiles (p50/p90/p99/p99.9/max, exact, from every sample) and
//! the round trips per second. `--server` runs the echo side only (as `echo-server`);
//! `--both` runs the server and the client in one process on a two-core runtime.
//!
//! ```sh
//! cargo run --release -p corewire-examples --bin pingpong -- --both --addr shm://pp --count 100000
//! cargo run --release -p corewire-examples --bin pingpong -- --server --addr tcp://0.0.0.0:7000
//! cargo run --release -p corewire-examples --bin pingpong -- --addr tcp://HOST:7000 --count 100000 --size 4096
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use corewire_examples::{
    last_cpu, latency_line, parse_addr, runtime, serve_until_ctrl_c, Args, EchoServer, MSG_ECHO,
};
use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{ConnectionRef, Dispatcher, Message, Messenger, MessengerError};
use corewire_runtime::Runtime;
use corewire_transport::Address;

const USAGE: &str = "usage: pingpong --addr ADDR --server [--cores N]
       pingpong --addr ADDR [--count N] [--size BYTES] [--warmup N]
       pingpong --both [--addr ADDR] [--count N] [--size BYTES] [--warmup N]
  ADDR: tcp://HOST:PORT, shm://NAME, rdma://HOST:PORT?dev=rxe0 (--both: default tcp://127.0.0.1:0)";

struct State {
    sent: u64,
    at: Instant,
    /// When the first measured ping went out, and when the last reply came.
    span: (Option<Instant>, Option<Instant>),
    samples: Vec<u64>,
    error: Option<String>,
    done: bool,
}

struct Pinger {
    total: u64,
    warmup: u64,
    data: Vec<u8>,
    conn: OnceLock<ConnectionRef>,
    st: Mutex<State>,
    cv: Condvar,
}

impl Pinger {
    fn finish(&self, st: &mut State, error: Option<String>) {
        if st.error.is_none() {
            st.error = error;
        }
        st.done = true;
        st.span.1 = Some(Instant::now());
        self.cv.notify_all();
    }
    /// Send the next ping (on the connection's core; the state is locked).
    fn ping(&self, st: &mut State) {
        st.sent += 1;
        let msg = Message::new(MSG_ECHO).with_tid(st.sent).with_payload(
            Vec::new().into(),
            Vec::new().into(),
            self.data.clone().into(),
        );
        st.at = Instant::now();
        if st.sent == self.warmup + 1 {
            st.span.0 = Some(st.at);
        }
        if let Some(c) = self.conn.get() {
            if let Err(e) = c.send(msg) {
                self.finish(st, Some(format!("send: {e}")));
            }
        }
    }
}

impl Dispatcher for Pinger {
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        let now = Instant::now();
        let mut st = self.st.lock().expect("poison");
        if st.done {
            return;
        }
        if msg.tid != st.sent || msg.data.len() != self.data.len() {
            let e = format!(
                "reply tid {} with {} B where tid {} with {} B was expected",
                msg.tid,
                msg.data.len(),
                st.sent,
                self.data.len()
            );
            return self.finish(&mut st, Some(e));
        }
        if st.sent > self.warmup {
            let ns = (now - st.at).as_nanos().max(1) as u64;
            st.samples.push(ns);
        }
        if st.sent == self.total {
            self.finish(&mut st, None);
        } else {
            self.ping(&mut st);
        }
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, reason: &MessengerError) -> bool {
        let mut st = self.st.lock().expect("poison");
        if !st.done {
            let e = format!("connection to {} reset: {reason}", conn.peer());
            self.finish(&mut st, Some(e));
        }
        true
    }
}

struct Opts {
    addr: Option<Address>,
    server: bool,
    both: bool,
    cores: usize,
    count: u64,
    size: usize,
    warmup: u64,
    timeout: u64,
    cpus: Option<Vec<usize>>,
}

/// Ping `addr` from a client messenger on `rt`; prints the results.
fn client(rt: &Runtime, addr: &Address, o: &Opts) -> Result<(), String> {
    let err = |e: MessengerError| e.to_string();
    let msgr = Messenger::builder(EntityName::new(EntityType::Client, 1))
        .transport(addr.kind())
        .handle(rt.handle())
        .build()
        .map_err(err)?;
    let p = Arc::new(Pinger {
        total: o.warmup + o.count,
        warmup: o.warmup,
        data: vec![0xa5; o.size],
        conn: OnceLock::new(),
        st: Mutex::new(State {
            sent: 0,
            at: Instant::now(),
            span: (None, None),
            samples: Vec::with_capacity(o.count as usize),
            error: None,
            done: false,
        }),
        cv: Condvar::new(),
    });
    msgr.add_dispatcher_tail(p.clone()).map_err(err)?;
    msgr.start().map_err(err)?;
    let conn = rt
        .block_on(msgr.connect(addr))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let core = conn.core();
    let _ = p.conn.set(conn);
    let t0 = Instant::now();
    let p2 = p.clone();
    rt.block_on(rt.handle().submit_to(core, move || {
        let mut st = p2.st.lock().expect("poison");
        p2.ping(&mut st);
    }))
    .map_err(|e| format!("submit to core {core}: {e}"))?;
    let (mut samples, span, error) = {
        let st = p.st.lock().expect("poison");
        let (mut st, r) =
            p.cv.wait_timeout_while(st, Duration::from_secs(o.timeout), |s| !s.done)
                .expect("poison");
        let error = if r.timed_out() {
            Some(format!(
                "timed out after {} s ({} sent)",
                o.timeout, st.sent
            ))
        } else {
            st.error.take()
        };
        (std::mem::take(&mut st.samples), st.span, error)
    };
    let elapsed = t0.elapsed();
    let _ = rt.block_on(msgr.shutdown());
    rt.block_on(msgr.wait());
    if let Some(e) = error {
        return Err(e);
    }
    let n = samples.len() as u64;
    // Round trips/s over the measured ones (warm-up excluded).
    let measured = match span {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => elapsed.as_secs_f64(),
    };
    println!(
        "pingpong {addr}: {} B messages, one in flight: {n} round trips (+{} warm-up) in {:.3} s, {:.0} round trips/s",
        o.size,
        o.warmup,
        elapsed.as_secs_f64(),
        n as f64 / measured.max(1e-9)
    );
    println!("rtt µs: {}", latency_line(&mut samples));
    Ok(())
}

fn run() -> Result<(), String> {
    let mut a = Args::from_env(USAGE);
    let mut o = Opts {
        addr: None,
        server: false,
        both: false,
        cores: 1,
        count: 10_000,
        size: 64,
        warmup: 1000,
        timeout: 60,
        cpus: None,
    };
    while let Some(f) = a.next_flag() {
        match f.as_str() {
            "--addr" => o.addr = Some(parse_addr(&a.value(&f)?)?),
            "--server" => o.server = true,
            "--both" => o.both = true,
            "--cores" => o.cores = a.parse(&f)?,
            "--count" | "-n" => o.count = a.parse(&f)?,
            "--size" => o.size = a.parse(&f)?,
            "--warmup" => o.warmup = a.parse(&f)?,
            "--timeout" => o.timeout = a.parse(&f)?,
            "--cpus" => o.cpus = Some(a.cpus(&f)?),
            _ => return Err(a.unknown(&f)),
        }
    }
    if o.server && o.both {
        return Err(format!("--server and --both exclude each other\n{USAGE}"));
    }
    if !o.server && o.count == 0 {
        return Err("--count must be > 0".into());
    }
    if o.server {
        let addr = o.addr.take().ok_or(USAGE)?;
        return serve_until_ctrl_c("pingpong", &addr, o.cores, o.cpus.take());
    }
    if o.both {
        let listen = match o.addr.take() {
            Some(a) => a,
            None => parse_addr("tcp://127.0.0.1:0")?,
        };
        // Two cores: the server's and the client's connections land on one or the other
        // (each messenger shards its connections by peer).
        let rt = runtime(2, o.cpus.take(), "pingpong")?;
        let srv = EchoServer::start(&rt, &listen, false)?;
        let res = client(&rt, &srv.addr.clone(), &o);
        srv.stop(&rt)?;
        rt.shutdown().map_err(|e| e.to_string())?;
        return res;
    }
    let addr = o.addr.take().ok_or(USAGE)?;
    let rt = runtime(
        1,
        Some(o.cpus.take().unwrap_or_else(|| vec![last_cpu()])),
        "ping",
    )?;
    let res = client(&rt, &addr, &o);
    rt.shutdown().map_err(|e| e.to_string())?;
    res
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pingpong: {e}");
            ExitCode::FAILURE
        }
    }
}
