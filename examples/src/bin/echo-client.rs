//! `echo-client`: sends `--count` messages of `--size` bytes with a recognisable payload to
//! an `echo-server` (`--window` in flight), checks that every echo comes back byte-exact and
//! in order, prints a summary and exits non-zero on any mismatch, reset or timeout.
//!
//! ```sh
//! cargo run --release -p corewire-examples --bin echo-client -- --addr tcp://127.0.0.1:7000 --count 10000 --size 4096
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use corewire_examples::{last_cpu, parse_addr, payload, runtime, Args, MSG_ECHO};
use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{ConnectionRef, Dispatcher, Message, Messenger, MessengerError};
use corewire_transport::Address;

const USAGE: &str = "usage: echo-client --addr ADDR [--count N] [--size BYTES] [--window N] [--timeout SECS] [--cpus LIST]";

struct State {
    sent: u64,
    received: u64,
    bytes: u64,
    error: Option<String>,
    done: bool,
}

struct Client {
    count: u64,
    size: usize,
    conn: OnceLock<ConnectionRef>,
    st: Mutex<State>,
    cv: Condvar,
}

impl Client {
    /// The `tid`-th request: front `echo #tid` (with the size), data of `size` bytes.
    fn request(&self, tid: u64) -> Message {
        let front = format!("echo #{tid} of {} B", self.size).into_bytes();
        Message::new(MSG_ECHO).with_tid(tid).with_payload(
            front.into(),
            Vec::new().into(),
            payload(tid, self.size).into(),
        )
    }
    /// Send the next request if any is left (called with the state locked).
    fn send_next(&self, st: &mut State) {
        if st.sent >= self.count || st.done {
            return;
        }
        st.sent += 1;
        if let Some(c) = self.conn.get() {
            if let Err(e) = c.send(self.request(st.sent)) {
                self.fail(st, format!("send #{}: {e}", st.sent));
            }
        }
    }
    fn fail(&self, st: &mut State, e: String) {
        if st.error.is_none() {
            st.error = Some(e);
        }
        st.done = true;
        self.cv.notify_all();
    }
    fn check(&self, st: &State, msg: &Message) -> Result<(), String> {
        let want = st.received + 1;
        if msg.tid != want {
            return Err(format!(
                "out of order: echo with tid {} where {want} was next",
                msg.tid
            ));
        }
        let expect = self.request(want);
        if msg.msg_type != expect.msg_type {
            return Err(format!(
                "echo #{want}: type {} (sent {})",
                msg.msg_type, expect.msg_type
            ));
        }
        for (what, got, sent) in [
            ("front", &msg.front, &expect.front),
            ("middle", &msg.middle, &expect.middle),
            ("data", &msg.data, &expect.data),
        ] {
            if got != sent {
                let at = got.iter().zip(sent.iter()).position(|(a, b)| a != b);
                return Err(format!(
                    "echo #{want}: {what} differs ({} B back, {} B sent, first difference at {})",
                    got.len(),
                    sent.len(),
                    at.map_or("the end".into(), |i| format!("byte {i}"))
                ));
            }
        }
        Ok(())
    }
}

impl Dispatcher for Client {
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        let mut st = self.st.lock().expect("poison");
        if st.done {
            return;
        }
        if let Err(e) = self.check(&st, &msg) {
            return self.fail(&mut st, e);
        }
        st.received += 1;
        st.bytes += msg.payload_len() as u64;
        if st.received == self.count {
            st.done = true;
            self.cv.notify_all();
        } else {
            self.send_next(&mut st);
        }
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, reason: &MessengerError) -> bool {
        let mut st = self.st.lock().expect("poison");
        if !st.done {
            self.fail(
                &mut st,
                format!("connection to {} reset: {reason}", conn.peer()),
            );
        }
        true
    }
}

fn run() -> Result<(), String> {
    let mut a = Args::from_env(USAGE);
    let (mut addr, mut count, mut size, mut window, mut timeout, mut cpus) =
        (None, 1000u64, 4096usize, 16u64, 60u64, None);
    while let Some(f) = a.next_flag() {
        match f.as_str() {
            "--addr" => addr = Some(parse_addr(&a.value(&f)?)?),
            "--count" | "-n" => count = a.parse(&f)?,
            "--size" => size = a.parse(&f)?,
            "--window" => window = a.parse::<u64>(&f)?.max(1),
            "--timeout" => timeout = a.parse(&f)?,
            "--cpus" => cpus = Some(a.cpus(&f)?),
            _ => return Err(a.unknown(&f)),
        }
    }
    let addr: Address = addr.ok_or(a.usage())?;
    let rt = runtime(
        1,
        Some(cpus.unwrap_or_else(|| vec![last_cpu()])),
        "echo-cli",
    )?;
    let err = |e: MessengerError| e.to_string();
    let msgr = Messenger::builder(EntityName::new(EntityType::Client, 1))
        .transport(addr.kind())
        .handle(rt.handle())
        .build()
        .map_err(err)?;
    let client = Arc::new(Client {
        count,
        size,
        conn: OnceLock::new(),
        st: Mutex::new(State {
            sent: 0,
            received: 0,
            bytes: 0,
            error: None,
            done: count == 0,
        }),
        cv: Condvar::new(),
    });
    msgr.add_dispatcher_tail(client.clone()).map_err(err)?;
    msgr.start().map_err(err)?;
    let conn = rt
        .block_on(msgr.connect(&addr))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let core = conn.core();
    let _ = client.conn.set(conn);
    let t0 = Instant::now();
    // Send the first window from the connection's core, like every later send (from the
    // dispatcher): a send from another thread takes a cross-core queue hop, and a send made
    // on the core meanwhile could overtake it.
    let c = client.clone();
    rt.block_on(rt.handle().submit_to(core, move || {
        let mut st = c.st.lock().expect("poison");
        for _ in 0..window {
            c.send_next(&mut st);
        }
    }))
    .map_err(|e| format!("submit to core {core}: {e}"))?;
    let st = {
        let st = client.st.lock().expect("poison");
        let (st, r) = client
            .cv
            .wait_timeout_while(st, Duration::from_secs(timeout), |s| !s.done)
            .expect("poison");
        let (received, sent, bytes, error) = (st.received, st.sent, st.bytes, st.error.clone());
        drop(st);
        if r.timed_out() {
            (
                received,
                sent,
                bytes,
                Some(format!("timed out after {timeout} s")),
            )
        } else {
            (received, sent, bytes, error)
        }
    };
    let elapsed = t0.elapsed();
    let _ = rt.block_on(msgr.shutdown());
    rt.block_on(msgr.wait());
    let _ = rt.shutdown();
    let (received, sent, bytes, error) = st;
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "echo-client: {received}/{count} echoes of {size} B checked byte-exact and in order \
         ({sent} sent, {bytes} B back) in {:.3} s: {:.0} msgs/s, {:.1} MB/s each way ({})",
        secs,
        received as f64 / secs,
        bytes as f64 / secs / 1e6,
        addr.kind()
    );
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-client: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
