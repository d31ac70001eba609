//! Interop with a real Ceph monitor (Ceph 16.2 Pacific, auth none, msgr2.1 crc mode).
//!
//! Needs `CW_CEPH_CONF` (from `scripts/ceph-mon start`); without it the tests print why they
//! skip, and fail if `CW_REQUIRE_CEPH` is set.
//!
//! ```sh
//! eval "$(scripts/ceph-mon start)"
//! CW_REQUIRE_CEPH=1 cargo test -p corewire-messenger --test ceph_interop
//! scripts/ceph-mon stop
//! ```

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use corewire_messenger::ceph::{MMonSubscribe, MOsdMapHead, MonSession, CEPH_MSG_OSD_MAP};
use corewire_messenger::wire::EntityType;
use corewire_runtime::Runtime;
use corewire_transport::Address;

const TIMEOUT: Duration = Duration::from_secs(20);

struct Cluster {
    conf: String,
    fsid: String,
    epoch: u64,
    mon_v2: SocketAddr,
}

fn ceph(conf: &str, args: &[&str]) -> String {
    let out = Command::new("ceph")
        .arg("-c")
        .arg(conf)
        .args(["--connect-timeout", "10"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ceph {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ceph {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Minimal field extraction from `ceph mon dump -f json` (no JSON crate in the workspace).
fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} not in {json}"))
        + pat.len();
    let rest = json[at..].trim_start();
    if let Some(r) = rest.strip_prefix('"') {
        &r[..r.find('"').unwrap()]
    } else {
        let end = rest.find([',', '}']).unwrap();
        rest[..end].trim()
    }
}

fn cluster() -> Option<Cluster> {
    let Ok(conf) = std::env::var("CW_CEPH_CONF") else {
        eprintln!(
            "SKIP ceph_interop: CW_CEPH_CONF is not set (run `eval \"$(scripts/ceph-mon start)\"` \
             to start a monitor)"
        );
        assert!(
            std::env::var_os("CW_REQUIRE_CEPH").is_none(),
            "CW_REQUIRE_CEPH is set but CW_CEPH_CONF is not"
        );
        return None;
    };
    let dump = ceph(&conf, &["mon", "dump", "-f", "json"]);
    let fsid = ceph(&conf, &["fsid"]).trim().to_owned();
    assert_eq!(json_field(&dump, "fsid"), fsid);
    let epoch = json_field(&dump, "epoch").parse().unwrap();
    // The first v2 address of mon rank 0.
    let v2 = &dump[dump
        .find("\"type\":\"v2\"")
        .expect("no v2 address in mon dump")..];
    let mon_v2 = json_field(v2, "addr").parse().unwrap();
    Some(Cluster {
        conf,
        fsid,
        epoch,
        mon_v2,
    })
}

fn runtime() -> Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    Runtime::builder()
        .cores(2)
        .spin_before_park(Duration::from_micros(20))
        .build()
        .unwrap()
}

fn tcp(a: SocketAddr) -> Address {
    Address::Tcp(a)
}

#[test]
fn handshake_version_and_monmap() {
    let Some(c) = cluster() else { return };
    let rt = runtime();
    let mut s = MonSession::connect(&rt, &tcp(c.mon_v2), TIMEOUT).expect("session with the mon");
    let info = s.peer_info().expect("peer info after READY");
    assert_eq!(info.name.ty, EntityType::Mon);
    assert_eq!(info.name.num, 0, "mon.a is rank 0");
    assert!(
        info.global_id > 0,
        "the mon assigns a global id (AUTH_MODE_MON): {info:?}"
    );

    let (v, rtt) = s.get_version("osdmap").expect("MMonGetVersionReply");
    assert!(v.version >= 1, "osdmap version {v:?}");
    assert!(
        v.oldest_version >= 1 && v.oldest_version <= v.version,
        "{v:?}"
    );
    eprintln!(
        "osdmap version {} oldest {} rtt {rtt:?}",
        v.version, v.oldest_version
    );

    let map = s.monmap().expect("MMonMap");
    assert_eq!(map.fsid.to_string(), c.fsid);
    assert_eq!(u64::from(map.epoch), c.epoch);
    assert_eq!(map.ranks, vec!["a".to_owned()]);
    let mon = map.mon_by_rank(0).unwrap();
    assert_eq!(
        mon.public_addrs.msgr2_addr().and_then(|a| a.addr),
        Some(c.mon_v2),
        "{}",
        mon.public_addrs
    );
    assert_eq!(map.min_mon_release, 16, "pacific");

    // osdmap subscription from epoch 1 (as Ceph's Objecter asks): an MOSDMap for our fsid.
    // (Start 0 asks for the latest full map; ceph-mon 16.2.15 aborts re-encoding it for a
    // session, see the crate docs.)
    s.send(&MMonSubscribe::default().with("osdmap", 1, 0))
        .unwrap();
    let m = s.recv_where(CEPH_MSG_OSD_MAP, |_| true).expect("MOSDMap");
    let head = m.decode::<MOsdMapHead>().unwrap();
    assert_eq!(head.fsid.to_string(), c.fsid);
    assert_eq!(u64::from(head.newest_map), v.version, "{head:?}");

    // Several requests in a row on the same session.
    for _ in 0..5 {
        let (r, _) = s.get_version("osdmap").unwrap();
        assert_eq!(r.version, v.version);
    }
    assert!(s.reset_reason().is_none());
    s.shutdown(&rt).unwrap();
    drop(c.conf);
}

/// A monitor port that accepts and closes at once: a clear error and `ms_handle_reset`
/// within the timeout, no hang.
#[test]
fn mon_port_closing_is_a_clean_error() {
    let Some(c) = cluster() else { return };
    let _ = c;
    let rt = runtime();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        drop(s);
    });
    let t0 = Instant::now();
    let r = MonSession::connect(&rt, &tcp(addr), Duration::from_secs(10));
    let err = r
        .err()
        .expect("connect to a closing port must fail")
        .to_string();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(err.contains("reset"), "{err}");
    t.join().unwrap();
}

/// A private monitor killed mid-session: the next request fails with a clear error,
/// `ms_handle_reset` fires, nothing hangs or panics.
#[test]
fn mon_killed_mid_session_resets() {
    let Some(_shared) = cluster() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ceph-mon");
    let dir = std::env::temp_dir().join(format!("corewire-ceph-kill-{}", std::process::id()));
    let ctl = |cmd: &str| {
        Command::new(script)
            .arg(cmd)
            .env("CW_CEPH_DIR", &dir)
            .output()
            .unwrap_or_else(|e| panic!("{script} {cmd}: {e}"))
    };
    let out = ctl("start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = String::from_utf8(out.stdout).unwrap();
    let v2 = env
        .lines()
        .find_map(|l| l.strip_prefix("export CW_CEPH_MON_ADDR=v2:"))
        .expect("CW_CEPH_MON_ADDR")
        .parse()
        .unwrap();
    let rt = runtime();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut s = MonSession::connect(&rt, &tcp(v2), TIMEOUT).expect("session");
        s.get_version("osdmap").expect("first request");
        assert!(ctl("stop").status.success());
        let t0 = Instant::now();
        let err = s
            .get_version("osdmap")
            .expect_err("mon is gone")
            .to_string();
        assert!(t0.elapsed() < TIMEOUT, "took {:?}", t0.elapsed());
        assert!(err.contains("reset"), "{err}");
        let reason = s.reset_reason().expect("ms_handle_reset");
        assert!(
            reason.contains("closed") || reason.contains("reset"),
            "{reason}"
        );
        assert!(s.connection().is_closed());
        s.shutdown(&rt).unwrap();
    }));
    let _ = ctl("stop");
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// A client that requires a feature the monitor lacks: the real mon answers
/// IDENT_MISSING_FEATURES, and the connection ends in a typed `MissingFeatures` error reported
/// through `ms_handle_reset`; nothing hangs or panics.
#[test]
fn mon_refuses_a_required_feature_it_lacks() {
    use std::sync::{Arc, Mutex};

    use corewire_messenger::wire::EntityName;
    use corewire_messenger::{ConnectionRef, Dispatcher, Messenger, MessengerError, Policy};

    let Some(c) = cluster() else { return };
    // Bit 62 is clear in every Pacific daemon's feature set (0x3f01cfbdfffdffff).
    const MISSING: u64 = 1 << 62;

    #[derive(Default)]
    struct Resets(Mutex<Vec<u64>>);
    impl Dispatcher for Resets {
        fn ms_handle_reset(&self, _conn: &ConnectionRef, reason: &MessengerError) -> bool {
            if let MessengerError::MissingFeatures { missing, .. } = reason {
                self.0.lock().unwrap().push(*missing);
            } else {
                self.0.lock().unwrap().push(0);
            }
            false
        }
    }

    let rt = runtime();
    let msgr = Messenger::builder(EntityName::new(EntityType::Client, EntityName::NEW))
        .handle(rt.handle())
        .auth_id("admin")
        .policy(EntityType::Mon, Policy::lossy_client(MISSING))
        .build()
        .unwrap();
    let resets = Arc::new(Resets::default());
    msgr.add_dispatcher_tail(resets.clone()).unwrap();
    msgr.start().unwrap();
    let t0 = Instant::now();
    let conn = rt.block_on(msgr.connect(&tcp(c.mon_v2)));
    let got = loop {
        if let Some(&m) = resets.0.lock().unwrap().first() {
            break Some(m);
        }
        if t0.elapsed() > TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    match got {
        Some(missing) => assert_eq!(missing & MISSING, MISSING, "reset for another reason"),
        None => panic!(
            "no ms_handle_reset within {TIMEOUT:?} (connect returned {:?})",
            conn.as_ref().map(|c| c.close_reason())
        ),
    }
    drop(conn);
    rt.block_on(msgr.shutdown()).unwrap();
}
