//! `ceph-mon-ping`: connects to a Ceph monitor with corewire's messenger (msgr2.1, crc mode,
//! auth none) and prints the cluster fsid, the map epochs and the round-trip times of a few
//! `MMonGetVersion` requests.
//!
//! ```sh
//! cargo run -p corewire-examples --bin ceph-mon-ping -- --mon v2:127.0.0.1:3300
//! cargo run -p corewire-examples --bin ceph-mon-ping -- --conf /etc/ceph/ceph.conf -n 10
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use corewire_messenger::ceph::MonSession;
use corewire_messenger::wire::{EntityAddr, EntityAddrType};
use corewire_runtime::Runtime;
use corewire_transport::Address;

const USAGE: &str = "usage: ceph-mon-ping (--mon v2:IP:PORT | --conf CEPH_CONF) [-n COUNT]";

/// The first `v2:` address of `mon host` (or `mon_host`) in a ceph.conf.
fn mon_from_conf(path: &str) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim().replace('_', " ") != "mon host" {
            continue;
        }
        for tok in v.split([',', '[', ']', ' ']) {
            if let Some(rest) = tok.trim().strip_prefix("v2:") {
                return rest
                    .parse()
                    .map_err(|e| format!("{path}: mon host {rest:?}: {e}"));
            }
        }
    }
    Err(format!("{path}: no v2: address in `mon host`"))
}

fn parse_args() -> Result<(SocketAddr, usize), String> {
    let mut args = std::env::args().skip(1);
    let (mut mon, mut count) = (None, 5);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--mon" => {
                let s = val()?;
                let ea: EntityAddr = s.parse().map_err(|e| format!("--mon {s}: {e}"))?;
                if ea.ty != EntityAddrType::Msgr2 {
                    return Err(format!(
                        "--mon {s}: only msgr2 (v2:) addresses are supported"
                    ));
                }
                mon = Some(
                    ea.addr
                        .filter(|a| a.port() != 0)
                        .ok_or("--mon needs a port")?,
                );
            }
            "--conf" | "-c" => mon = Some(mon_from_conf(&val()?)?),
            "-n" | "--count" => count = val()?.parse().map_err(|e| format!("-n: {e}"))?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Ok((mon.ok_or(USAGE)?, count))
}

fn run(mon: SocketAddr, count: usize) -> Result<(), String> {
    let rt = Runtime::builder()
        .cores(1)
        .build()
        .map_err(|e| e.to_string())?;
    let err = |e: corewire_messenger::MessengerError| e.to_string();
    let mut s =
        MonSession::connect(&rt, &Address::Tcp(mon), Duration::from_secs(10)).map_err(err)?;
    let info = s.peer_info().expect("connected");
    println!(
        "connected to {} at v2:{mon} (features {:#x}, our global_id {})",
        info.name, info.features, info.global_id
    );
    let map = s.monmap().map_err(err)?;
    println!("fsid {}", map.fsid);
    println!("monmap epoch {} ({} mons)", map.epoch, map.mons.len());
    for (rank, name) in map.ranks.iter().enumerate() {
        if let Some(m) = map.mons.get(name) {
            println!("  mon.{name} rank {rank} {}", m.public_addrs);
        }
    }
    for i in 0..count {
        let (r, rtt) = s.get_version("osdmap").map_err(err)?;
        if i == 0 {
            println!("osdmap epoch {} (oldest {})", r.version, r.oldest_version);
        }
        println!(
            "get_version osdmap #{}: rtt {:.1} us",
            i + 1,
            rtt.as_secs_f64() * 1e6
        );
    }
    s.shutdown(&rt).map_err(err)?;
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|(mon, n)| run(mon, n)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ceph-mon-ping: {e}");
            ExitCode::FAILURE
        }
    }
}
