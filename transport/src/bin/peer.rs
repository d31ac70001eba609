//! `corewire-transport-peer ADDR MODE`: a transport probe, used by the conformance suite as a
//! separate process it can kill.
//!
//! Modes:
//! - `partial-frame`: connect, send a frame header announcing 1 MiB and 64 KiB of it, print
//!   `ready`, then wait (to be killed mid-stream).
//! - `echo-once`: connect, send one framed message `hello`, wait for the echo, print it.
//! - `alloc-stream`: connect, send 4 MiB `Endpoint::alloc` buffers (zero-copy RDMA WRITEs
//!   over rdma) back to back, print `ready` after the first, and go on (to be killed with
//!   WRITEs in flight).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use corewire_runtime::{timer, Runtime};
use corewire_transport::framed::{header, Framed};
use corewire_transport::{Address, Endpoint};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: corewire-transport-peer ADDR partial-frame|echo-once|alloc-stream");
        std::process::exit(2);
    }
    let addr: Address = match args[1].parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mode = args[2].clone();
    let rt = match Runtime::builder().cores(1).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(rt.spawn_on(0, move || async move {
        let ep = corewire_transport::connect_any(&addr)
            .await
            .map_err(|e| e.to_string())?;
        match mode.as_str() {
            "partial-frame" => {
                ep.send(vec![header(1 << 20), Bytes::from(vec![0xabu8; 64 << 10])])
                    .await
                    .map_err(|e| e.to_string())?;
                ep.flush().await.map_err(|e| e.to_string())?;
                println!("ready");
                let _ = std::io::stdout().flush();
                timer::sleep(Duration::from_secs(120)).await;
                Ok(())
            }
            "alloc-stream" => {
                for i in 0u64.. {
                    let mut b = ep.alloc(4 << 20);
                    b.fill(i as u8);
                    ep.send(vec![b.freeze()]).await.map_err(|e| e.to_string())?;
                    if i == 0 {
                        ep.flush().await.map_err(|e| e.to_string())?;
                        println!("ready");
                        let _ = std::io::stdout().flush();
                    }
                }
                Ok(())
            }
            "echo-once" => {
                let f = Framed::new(ep, 1 << 20);
                f.send_msg(vec![Bytes::from_static(b"hello")])
                    .await
                    .map_err(|e| e.to_string())?;
                let m = f.recv_msg().await.map_err(|e| e.to_string())?;
                println!("{}", String::from_utf8_lossy(&m));
                Ok(())
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
