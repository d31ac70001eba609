//! `echo-server`: a messenger that sends every message it receives back to its sender (same
//! type, tid, front, middle and data). Prints the bound address on its first line
//! (`listening on tcp://127.0.0.1:PORT`), a line per connection accepted or reset, and stops
//! cleanly on Ctrl-C.
//!
//! ```sh
//! cargo run --release -p corewire-examples --bin echo-server -- --addr tcp://127.0.0.1:7000
//! cargo run --release -p corewire-examples --bin echo-server -- --addr shm://echo --cores 2
//! ```

use std::process::ExitCode;

use corewire_examples::{parse_addr, serve_until_ctrl_c, Args};

const USAGE: &str = "usage: echo-server --addr ADDR [--cores N] [--cpus LIST]
  ADDR: tcp://HOST:PORT (port 0: any), shm://NAME, rdma://HOST:PORT?dev=rxe0";

fn run() -> Result<(), String> {
    let mut a = Args::from_env(USAGE);
    let (mut addr, mut cores, mut cpus) = (None, 1, None);
    while let Some(f) = a.next_flag() {
        match f.as_str() {
            "--addr" => addr = Some(parse_addr(&a.value(&f)?)?),
            "--cores" => cores = a.parse(&f)?,
            "--cpus" => cpus = Some(a.cpus(&f)?),
            _ => return Err(a.unknown(&f)),
        }
    }
    let addr = addr.ok_or(a.usage())?;
    serve_until_ctrl_c("echo-server", &addr, cores, cpus)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-server: {e}");
            ExitCode::FAILURE
        }
    }
}
