//! The RDMA verbs layer against a real device.
//!
//! Needs an RDMA device: run the test binary inside `scripts/rxe-vm` (Soft-RoCE `rxe0`):
//!
//! ```text
//! cargo test -p corewire-transport --features rdma --test rdma_verbs --no-run
//! CW_RDMA_REQUIRE=1 scripts/rxe-vm target/debug/deps/rdma_verbs-HASH --test-threads=1
//! ```
//!
//! Without a device (`/sys/class/infiniband` empty or missing) each device test checks instead
//! that opening fails with `NoRdmaDevice` and says why, then stops; `CW_RDMA_REQUIRE=1` turns
//! that into a failure. `CW_RDMA_DEV` names the device (default `rxe0`).
#![cfg(feature = "rdma")]

use std::path::Path;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use corewire_transport::rdma::verbs::{
    device_names, Access, CompletionQueue, Context, GidType, MemoryRegion, PortState,
    ProtectionDomain, QpConfig, QpState, QueuePair, RecvWr, SendWr, SharedReceiveQueue, WcOpcode,
    WcStatus, WorkCompletion,
};
use corewire_transport::{RdmaOptions, TransportError};

const TIMEOUT: Duration = Duration::from_secs(60);

fn dev_name() -> String {
    std::env::var("CW_RDMA_DEV").unwrap_or_else(|_| "rxe0".into())
}

fn sysfs_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The test device's context, or `None` after checking the no-device error.
fn open_dev() -> Option<Rc<Context>> {
    let dev = dev_name();
    if sysfs_devices().contains(&dev) {
        return Some(Context::open_by_name(&dev, 1, None).expect("open the test device"));
    }
    assert!(
        std::env::var("CW_RDMA_REQUIRE").as_deref() != Ok("1"),
        "CW_RDMA_REQUIRE=1 but there is no RDMA device {dev} (run inside scripts/rxe-vm)"
    );
    let err = Context::open_by_name(&dev, 1, None).expect_err("no device, yet open succeeded");
    match &err {
        TransportError::NoRdmaDevice { wanted, .. } => assert!(wanted.contains(&dev), "{err}"),
        other => panic!("expected NoRdmaDevice, got {other:?}"),
    }
    eprintln!("no RDMA device {dev} here; checked the error instead: {err}");
    None
}

/// Polls `cq` until `n` completions arrived (panics after [`TIMEOUT`]).
fn wait_n(cq: &CompletionQueue, n: usize) -> Vec<WorkCompletion> {
    let mut got = Vec::new();
    let mut buf = vec![WorkCompletion::default(); 32];
    let deadline = Instant::now() + TIMEOUT;
    while got.len() < n {
        let k = cq.poll(&mut buf).expect("poll");
        got.extend(buf[..k].iter().cloned());
        if k == 0 {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} completions, got {got:?}"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    assert_eq!(got.len(), n, "more completions than expected: {got:?}");
    got
}

fn assert_ok(wc: &WorkCompletion) {
    assert!(wc.is_success(), "completion failed: {wc:?}");
}

/// Two RC queue pairs on one device, each with its own CQ, connected to each other.
struct Pair {
    pd: Rc<ProtectionDomain>,
    cq_a: Rc<CompletionQueue>,
    cq_b: Rc<CompletionQueue>,
    a: QueuePair,
    b: QueuePair,
}

fn pair(ctx: &Rc<Context>) -> Pair {
    let pd = ProtectionDomain::new(ctx).unwrap();
    let cq_a = CompletionQueue::new(ctx, 512).unwrap();
    let cq_b = CompletionQueue::new(ctx, 512).unwrap();
    let a = QueuePair::new(&pd, &cq_a, &cq_a, None, QpConfig::default()).unwrap();
    let b = QueuePair::new(&pd, &cq_b, &cq_b, None, QpConfig::default()).unwrap();
    assert_eq!(a.state(), QpState::Init);
    let (ea, eb) = (a.endpoint(), b.endpoint());
    assert_eq!(
        ea.mtu,
        ctx.port_info().active_mtu,
        "endpoint MTU comes from the port"
    );
    a.connect(&eb).unwrap();
    b.connect(&ea).unwrap();
    assert_eq!(a.query_state().unwrap(), QpState::Rts);
    assert_eq!(b.query_state().unwrap(), QpState::Rts);
    Pair {
        pd,
        cq_a,
        cq_b,
        a,
        b,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn no_device_error_names_the_cause() {
    let devs = sysfs_devices();
    let has_uverbs = Path::new("/sys/class/infiniband_verbs").exists();
    match device_names() {
        Ok(names) => {
            assert!(has_uverbs, "device list readable without uverbs");
            let mut names = names;
            names.sort();
            assert_eq!(names, devs, "libibverbs and sysfs disagree");
            if devs.is_empty() {
                let err = Context::open(&RdmaOptions::default()).unwrap_err();
                assert!(
                    matches!(&err, TransportError::NoRdmaDevice { found, .. } if found.is_empty()),
                    "{err:?}"
                );
                assert!(err.to_string().contains("lists no devices"), "{err}");
            }
            eprintln!("RDMA devices here: {names:?}");
        }
        Err(err) => {
            // This host: no ib_uverbs, ibv_get_device_list fails with ENOSYS.
            assert!(
                devs.is_empty(),
                "sysfs lists {devs:?} but the device list failed: {err}"
            );
            let TransportError::NoRdmaDevice { found, reason, .. } = &err else {
                panic!("expected NoRdmaDevice, got {err:?}");
            };
            assert!(found.is_empty());
            if !has_uverbs {
                assert!(reason.contains("ENOSYS"), "{reason}");
                assert!(reason.contains("kernel has no RDMA support"), "{reason}");
                assert!(reason.contains("ib_uverbs"), "{reason}");
                assert!(reason.contains("scripts/rxe-vm"), "{reason}");
            }
            // Opening by name says the same, naming what was asked for.
            let err2 = Context::open_by_name("rxe0", 1, None).unwrap_err();
            let text = err2.to_string();
            assert!(
                text.contains("\"rxe0\"") && text.contains(reason.as_str()),
                "{text}"
            );
            eprintln!("as expected without RDMA: {text}");
        }
    }
}

#[test]
fn device_open_by_name_port_and_roce_v2_gid() {
    let Some(ctx) = open_dev() else { return };
    let dev = dev_name();
    assert_eq!(ctx.name(), dev);
    assert_eq!(ctx.port(), 1);
    let port = ctx.port_info();
    assert_eq!(port.state, PortState::Active);
    assert_eq!(ctx.query_port().unwrap().state, PortState::Active);
    assert_eq!(
        ctx.gid_type(),
        GidType::RoceV2,
        "automatic choice is RoCE v2"
    );
    assert!(
        !ctx.gid().is_link_local(),
        "prefers a routable GID: {}",
        ctx.gid()
    );
    // The kernel's own word on the chosen entry.
    let t = std::fs::read_to_string(format!(
        "/sys/class/infiniband/{dev}/ports/1/gid_attrs/types/{}",
        ctx.gid_index()
    ))
    .unwrap();
    assert_eq!(t.trim(), "RoCE v2");
    let table = ctx.gid_table().unwrap();
    // With an IPv4 address on the netdev (rxe-vm: 10.99.0.1 on dummy0), the IPv4-mapped one.
    if table
        .iter()
        .any(|e| e.gid_type == GidType::RoceV2 && e.gid.ipv4().is_some())
    {
        assert!(ctx.gid().ipv4().is_some(), "{}", ctx.gid());
    }
    eprintln!(
        "{dev}: gid[{}]={} mtu {} link {:?}; table: {}",
        ctx.gid_index(),
        ctx.gid(),
        port.active_mtu.bytes(),
        port.link_layer,
        table
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // An explicit GID index is taken as is.
    let first = table[0];
    let c2 = Context::open_by_name(&dev, 1, Some(first.index)).unwrap();
    assert_eq!((c2.gid_index(), c2.gid()), (first.index, first.gid));

    // Unknown device: NoRdmaDevice listing what exists.
    let err = Context::open_by_name("nosuchdev9", 1, None).unwrap_err();
    match &err {
        TransportError::NoRdmaDevice { wanted, found, .. } => {
            assert!(wanted.contains("nosuchdev9"), "{err}");
            assert!(found.contains(&dev), "{err}");
        }
        other => panic!("expected NoRdmaDevice, got {other:?}"),
    }
    assert!(err.to_string().contains(&dev), "{err}");
    eprintln!("unknown device: {err}");

    // A port the device does not have, and an empty GID slot.
    let err = Context::open_by_name(&dev, 2, None).unwrap_err();
    assert!(
        matches!(err, TransportError::NoRdmaDevice { .. }),
        "{err:?}"
    );
    eprintln!("bad port: {err}");
    let err = Context::open_by_name(&dev, 1, Some(250)).unwrap_err();
    assert!(
        matches!(err, TransportError::NoRdmaDevice { .. }),
        "{err:?}"
    );

    // rnr_retry 7 (infinite) is refused.
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let cq = CompletionQueue::new(&ctx, 16).unwrap();
    let cfg = QpConfig {
        rnr_retry: 7,
        ..QpConfig::default()
    };
    let err = QueuePair::new(&pd, &cq, &cq, None, cfg).unwrap_err();
    assert!(err.to_string().contains("rnr_retry 7"), "{err}");
}

#[test]
fn loopback_send_recv_1b_4k_and_inline() {
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    let inline = p.a.max_inline_data() as usize;
    assert!(inline > 0, "provider granted no inline data");
    let sizes = [1usize, 4096, inline];
    let slot = 8192;
    let rx = MemoryRegion::new(&p.pd, slot * sizes.len(), Access::LOCAL_WRITE).unwrap();
    let mut tx = MemoryRegion::new(&p.pd, slot * sizes.len(), Access::NONE).unwrap();
    let sges: Vec<_> = (0..sizes.len())
        .map(|i| rx.sge(i * slot..(i + 1) * slot))
        .collect();
    let recvs: Vec<_> = (0..sizes.len())
        .map(|i| RecvWr::new(i as u64, std::slice::from_ref(&sges[i])))
        .collect();
    // SAFETY: `rx` outlives the QPs' use of it (completions are awaited below) and is not
    // touched until the receives complete.
    unsafe { p.b.post_recv(&recvs) }.unwrap();

    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len, i as u8 + 1);
        tx.as_mut_slice()[i * slot..i * slot + len].copy_from_slice(&data);
        let sge = tx.sge(i * slot..i * slot + len);
        // SAFETY: `tx` stays alive and unmodified until the send completion below, except for
        // the inline case, whose data is copied at post time.
        unsafe { p.a.post_send(&[SendWr::send(100 + i as u64, &[sge])]) }.unwrap();
        if len <= inline {
            // Inline: the bytes were copied by post_send; scribbling now changes nothing.
            tx.as_mut_slice()[i * slot..i * slot + len].fill(0xEE);
        }
        let s = wait_n(&p.cq_a, 1);
        assert_ok(&s[0]);
        assert_eq!(
            (s[0].wr_id(), s[0].opcode()),
            (100 + i as u64, WcOpcode::Send)
        );
        let r = wait_n(&p.cq_b, 1);
        assert_ok(&r[0]);
        assert_eq!(r[0].wr_id(), i as u64);
        assert_eq!(r[0].opcode(), WcOpcode::Recv);
        assert_eq!(r[0].byte_len() as usize, len);
        assert_eq!(r[0].qp_num(), p.b.qp_num());
        assert_eq!(r[0].imm_data(), None);
        assert!(
            rx.as_slice()[i * slot..i * slot + len] == data[..],
            "message {i} ({len} B) differs"
        );
        eprintln!(
            "SEND/RECV {len} B ok{}",
            if len <= inline { " (inline)" } else { "" }
        );
    }
}

#[test]
fn loopback_rdma_write_with_imm_4mib() {
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    const LEN: usize = 4 << 20;
    const IMM: u32 = 0xC0FF_EE42;
    let mut src = MemoryRegion::new(&p.pd, LEN, Access::NONE).unwrap();
    let data = pattern(LEN, 7);
    src.as_mut_slice().copy_from_slice(&data);
    let dst = MemoryRegion::from_box(
        &p.pd,
        vec![0u8; LEN].into_boxed_slice(),
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
    )
    .unwrap();
    // WRITE WITH IMM consumes one receive (no SGE needed: the data goes to the remote buffer).
    // SAFETY: a receive without SGEs names no memory.
    unsafe { p.b.post_recv(&[RecvWr::new(9, &[])]) }.unwrap();
    let sge = src.sge(0..LEN);
    let t0 = Instant::now();
    // SAFETY: `src` and `dst` stay alive and untouched until both completions below.
    unsafe {
        p.a.post_send(&[SendWr::write_with_imm(1, &[sge], dst.remote(), IMM)])
    }
    .unwrap();
    let s = wait_n(&p.cq_a, 1);
    assert_ok(&s[0]);
    assert_eq!((s[0].wr_id(), s[0].opcode()), (1, WcOpcode::RdmaWrite));
    let r = wait_n(&p.cq_b, 1);
    assert_ok(&r[0]);
    assert_eq!(r[0].wr_id(), 9);
    assert_eq!(r[0].opcode(), WcOpcode::RecvRdmaWithImm);
    assert_eq!(r[0].imm_data(), Some(IMM));
    assert_eq!(r[0].byte_len() as usize, LEN);
    assert!(dst.as_slice() == &data[..], "4 MiB RDMA WRITE differs");
    eprintln!(
        "RDMA WRITE WITH IMM 4 MiB ok in {:?} (emulated)",
        t0.elapsed()
    );

    // A write longer than the remote buffer is refused before posting.
    let small = dst.remote().offset(LEN as u64 - 16);
    // SAFETY: the request is rejected before anything is posted.
    let err = unsafe { p.a.post_send(&[SendWr::write(2, &[src.sge(0..32)], small)]) }.unwrap_err();
    assert!(err.to_string().contains("remote buffer"), "{err}");
}

#[test]
fn doorbell_chain_of_16_sends_last_signaled() {
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    const N: usize = 16;
    const SLOT: usize = 1024;
    let rx = MemoryRegion::new(&p.pd, N * SLOT, Access::LOCAL_WRITE).unwrap();
    let mut tx = MemoryRegion::new(&p.pd, N * SLOT, Access::NONE).unwrap();
    let rsges: Vec<_> = (0..N).map(|i| rx.sge(i * SLOT..(i + 1) * SLOT)).collect();
    let recvs: Vec<_> = (0..N)
        .map(|i| RecvWr::new(i as u64, std::slice::from_ref(&rsges[i])))
        .collect();
    // SAFETY: `rx` is untouched until all receives completed below.
    unsafe { p.b.post_recv(&recvs) }.unwrap();
    // Half inline-sized, half larger (not inline).
    let lens: Vec<usize> = (0..N)
        .map(|i| if i % 2 == 0 { 32 + i } else { 600 + i })
        .collect();
    let msgs: Vec<Vec<u8>> = (0..N).map(|i| pattern(lens[i], 0x40 + i as u8)).collect();
    for i in 0..N {
        tx.as_mut_slice()[i * SLOT..i * SLOT + lens[i]].copy_from_slice(&msgs[i]);
    }
    let tsges: Vec<_> = (0..N)
        .map(|i| tx.sge(i * SLOT..i * SLOT + lens[i]))
        .collect();
    let wrs: Vec<_> = (0..N)
        .map(|i| {
            SendWr::send(1000 + i as u64, std::slice::from_ref(&tsges[i])).signaled(i == N - 1)
        })
        .collect();
    // SAFETY: `tx` is untouched until the last (signaled) send completed, which retires all
    // 16 in order.
    unsafe { p.a.post_send(&wrs) }.unwrap();
    let s = wait_n(&p.cq_a, 1);
    assert_ok(&s[0]);
    assert_eq!(
        s[0].wr_id(),
        1000 + N as u64 - 1,
        "only the last send is signaled"
    );
    let r = wait_n(&p.cq_b, N);
    for (i, wc) in r.iter().enumerate() {
        assert_ok(wc);
        assert_eq!(wc.wr_id(), i as u64, "receives complete in order");
        assert_eq!(wc.byte_len() as usize, lens[i]);
        assert!(
            rx.as_slice()[i * SLOT..i * SLOT + lens[i]] == msgs[i][..],
            "message {i}"
        );
    }
    let mut buf = vec![WorkCompletion::default(); 4];
    assert_eq!(
        p.cq_a.poll(&mut buf).unwrap(),
        0,
        "unsignaled sends produced completions"
    );
    eprintln!("16 SENDs in one ibv_post_send, 1 signaled: all delivered");
}

/// `poll(2)` on `fd` for readability.
fn fd_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    rc == 1 && pfd.revents & libc::POLLIN != 0
}

#[test]
fn cq_interrupt_mode_without_lost_wakeups() {
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    let rx = MemoryRegion::new(&p.pd, 3 * 64, Access::LOCAL_WRITE).unwrap();
    let mut tx = MemoryRegion::new(&p.pd, 64, Access::NONE).unwrap();
    tx.as_mut_slice().fill(0x5A);
    let rs: Vec<_> = (0..3).map(|i| rx.sge(i * 64..(i + 1) * 64)).collect();
    let recvs: Vec<_> = (0..3)
        .map(|i| RecvWr::new(i as u64, std::slice::from_ref(&rs[i])))
        .collect();
    // SAFETY: `rx` is untouched until the receives complete.
    unsafe { p.b.post_recv(&recvs) }.unwrap();
    let cq = &p.cq_b;
    let fd = cq.channel_fd();
    let mut buf = vec![WorkCompletion::default(); 4];

    // 1. Armed on an empty CQ: nothing readable, no event pending.
    assert_eq!(cq.poll(&mut buf).unwrap(), 0);
    cq.req_notify(false).unwrap();
    assert_eq!(cq.poll(&mut buf).unwrap(), 0);
    assert!(!fd_readable(fd, Duration::ZERO));
    assert!(
        !cq.get_event_and_ack().unwrap(),
        "event without a completion"
    );

    // 2. A completion after arming makes the fd readable.
    let send = |id: u64| {
        let sge = tx.sge(0..16);
        // SAFETY: `tx` is not modified while sends are in flight (completions awaited).
        unsafe { p.a.post_send(&[SendWr::send(id, &[sge])]) }.unwrap();
        assert_ok(&wait_n(&p.cq_a, 1)[0]);
    };
    send(1);
    assert!(
        fd_readable(fd, TIMEOUT),
        "armed CQ got a completion but the fd stayed quiet"
    );
    assert!(cq.get_event_and_ack().unwrap());
    assert_eq!(cq.unacked_events(), 1, "acks are batched");
    assert!(!cq.get_event_and_ack().unwrap(), "one event per arming");
    // Re-arm, then poll: the completion that raised the event is found.
    cq.req_notify(false).unwrap();
    assert_eq!(cq.poll(&mut buf).unwrap(), 1);
    assert_eq!((buf[0].wr_id(), buf[0].byte_len()), (0, 16));

    // 3. Completions that land while the CQ is disarmed: arm, then poll. The poll after
    //    arming finds a completion that arrived before the arming (which raises no event);
    //    one arriving after it raises an event. Either way nothing is lost.
    for (id, wr) in [(2u64, 1u64), (3, 2)] {
        // Consume the event of the previous arming (raised by the completion just polled),
        // so the CQ is disarmed when the next completion lands.
        let _ = cq.get_event_and_ack().unwrap();
        send(id);
        cq.req_notify(false).unwrap();
        let how = if cq.poll(&mut buf).unwrap() == 1 {
            "the poll after arming"
        } else {
            assert!(fd_readable(fd, TIMEOUT), "armed, empty CQ, and no event");
            assert!(cq.get_event_and_ack().unwrap());
            assert_eq!(cq.poll(&mut buf).unwrap(), 1, "event but no completion");
            "the completion event"
        };
        assert_ok(&buf[0]);
        assert_eq!(buf[0].wr_id(), wr);
        eprintln!("completion {wr} found by {how}");
    }
    assert_eq!(cq.poll(&mut buf).unwrap(), 0);
}

#[test]
fn to_error_flushes_posted_receives_and_drops_cleanly() {
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    const N: usize = 8;
    let rx = MemoryRegion::new(&p.pd, N * 256, Access::LOCAL_WRITE).unwrap();
    let sges: Vec<_> = (0..N).map(|i| rx.sge(i * 256..(i + 1) * 256)).collect();
    let recvs: Vec<_> = (0..N)
        .map(|i| RecvWr::new(500 + i as u64, std::slice::from_ref(&sges[i])))
        .collect();
    // SAFETY: `rx` outlives the QP (dropped after it below) and is untouched.
    unsafe { p.a.post_recv(&recvs) }.unwrap();
    p.a.to_error().unwrap();
    assert_eq!(p.a.state(), QpState::Err);
    assert_eq!(p.a.query_state().unwrap(), QpState::Err);
    let wcs = wait_n(&p.cq_a, N);
    for (i, wc) in wcs.iter().enumerate() {
        assert_eq!(wc.status(), WcStatus::WR_FLUSH_ERR, "{wc:?}");
        assert_eq!(wc.wr_id(), 500 + i as u64);
        assert_eq!(wc.qp_num(), p.a.qp_num());
    }
    eprintln!("to_error flushed {N} receives: {}", wcs[0].status());
    // A receive posted to a QP in ERR is flushed by the next move to ERR (Soft-RoCE on Linux
    // 6.1 flushes receives only on the transition; ERR -> ERR is legal).
    // SAFETY: as above.
    unsafe { p.a.post_recv(&recvs[..1]) }.unwrap();
    p.a.to_error().unwrap();
    let wc = wait_n(&p.cq_a, 1);
    assert_eq!(wc[0].status(), WcStatus::WR_FLUSH_ERR);

    // Drop: no hang, nothing left behind on the CQ (the drain markers are consumed).
    let Pair {
        pd: _pd,
        cq_a,
        cq_b: _cq_b,
        a,
        b,
    } = p;
    let t0 = Instant::now();
    drop(a);
    let took = t0.elapsed();
    eprintln!("errored QP dropped in {took:?}");
    assert!(
        took < QpConfig::default().drain_timeout,
        "drain timed out instead of finishing"
    );
    let mut buf = vec![WorkCompletion::default(); 8];
    let n = cq_a.poll(&mut buf).unwrap();
    assert_eq!(n, 0, "left on the CQ after drop: {:?}", &buf[..n]);

    // close() returns what it flushed, so buffers can be reclaimed by wr_id.
    // SAFETY: `rx` outlives `b`, which is closed below.
    unsafe { b.post_recv(&recvs[..3]) }.unwrap();
    let flushed = b.close();
    let ids: Vec<u64> = flushed.iter().map(|w| w.wr_id()).collect();
    assert_eq!(ids, vec![500, 501, 502]);
    assert!(flushed.iter().all(|w| w.status() == WcStatus::WR_FLUSH_ERR));
}

#[test]
fn drop_keeps_other_queue_pairs_completions() {
    let Some(ctx) = open_dev() else { return };
    let pd = ProtectionDomain::new(&ctx).unwrap();
    let shared = CompletionQueue::new(&ctx, 64).unwrap();
    let cq_peer = CompletionQueue::new(&ctx, 64).unwrap();
    // a and c share `shared`; peer is a's partner.
    let a = QueuePair::new(&pd, &shared, &shared, None, QpConfig::default()).unwrap();
    let c = QueuePair::new(&pd, &shared, &shared, None, QpConfig::default()).unwrap();
    let peer = QueuePair::new(&pd, &cq_peer, &cq_peer, None, QpConfig::default()).unwrap();
    a.connect(&peer.endpoint()).unwrap();
    peer.connect(&a.endpoint()).unwrap();
    let rx = MemoryRegion::new(&pd, 4 * 128, Access::LOCAL_WRITE).unwrap();
    let mut tx = MemoryRegion::new(&pd, 128, Access::NONE).unwrap();
    tx.as_mut_slice().fill(1);
    let sges: Vec<_> = (0..4).map(|i| rx.sge(i * 128..(i + 1) * 128)).collect();
    // SAFETY: `rx` outlives both QPs and is only read after the completions.
    unsafe {
        a.post_recv(&[RecvWr::new(1, &sges[0..1])]).unwrap();
        c.post_recv(&[RecvWr::new(2, &sges[1..2]), RecvWr::new(3, &sges[2..3])])
            .unwrap();
    }
    // A completion for `a` lands on the shared CQ and stays unpolled.
    let sge = tx.sge(0..100);
    // SAFETY: `tx` is unmodified until the send completes.
    unsafe { peer.post_send(&[SendWr::send(7, &[sge])]) }.unwrap();
    assert_ok(&wait_n(&cq_peer, 1)[0]);
    // Dropping `c` drains `shared`: c's flushes are discarded, a's completion is kept.
    drop(c);
    let got = wait_n(&shared, 1);
    assert_ok(&got[0]);
    assert_eq!((got[0].wr_id(), got[0].qp_num()), (1, a.qp_num()));
    assert_eq!(got[0].byte_len(), 100);
    let mut buf = vec![WorkCompletion::default(); 8];
    assert_eq!(shared.poll(&mut buf).unwrap(), 0);
}

#[test]
fn drop_in_any_order_never_crashes() {
    let Some(ctx) = open_dev() else { return };
    let weak: Weak<Context> = Rc::downgrade(&ctx);

    // 1. Parents first: context, PD, CQ and SRQ handles dropped while QP and MR still work.
    {
        let pd = ProtectionDomain::new(&ctx).unwrap();
        let cq = CompletionQueue::new(&ctx, 64).unwrap();
        let srq = SharedReceiveQueue::new(&pd, 16, 1).unwrap();
        let q1 = QueuePair::new(&pd, &cq, &cq, Some(&srq), QpConfig::default()).unwrap();
        let q2 = QueuePair::new(&pd, &cq, &cq, None, QpConfig::default()).unwrap();
        let rx = MemoryRegion::new(&pd, 4096, Access::LOCAL_WRITE).unwrap();
        let mut tx = MemoryRegion::new(&pd, 4096, Access::NONE).unwrap();
        tx.as_mut_slice()[..300].fill(0x77);
        let cq_keep = Rc::clone(&cq);
        let srq_keep = Rc::clone(&srq);
        drop(pd);
        drop(cq);
        drop(srq);
        q1.connect(&q2.endpoint()).unwrap();
        q2.connect(&q1.endpoint()).unwrap();
        // q1 receives through the SRQ.
        let sge = rx.sge(0..4096);
        // SAFETY: the receive is consumed and polled below before `rx` is dropped, and `rx`
        // is not touched until then.
        unsafe { srq_keep.post_recv(&[RecvWr::new(11, &[sge])]) }.unwrap();
        // The QP refuses its own receives when it has an SRQ.
        // SAFETY: rejected before posting.
        assert!(unsafe { q1.post_recv(&[RecvWr::new(12, &[sge])]) }.is_err());
        let s = tx.sge(0..300);
        // SAFETY: `tx` is unmodified until the send completes.
        unsafe { q2.post_send(&[SendWr::send(13, &[s])]) }.unwrap();
        let wcs = wait_n(&cq_keep, 2);
        let recv = wcs.iter().find(|w| w.wr_id() == 11).expect("SRQ receive");
        assert_ok(recv);
        assert_eq!((recv.qp_num(), recv.byte_len()), (q1.qp_num(), 300));
        assert!(rx.as_slice()[..300].iter().all(|&b| b == 0x77));
        drop(cq_keep);
        drop(srq_keep);
        drop(ctx);
        assert!(weak.upgrade().is_some(), "children keep the context alive");
        // Children last, in mixed order.
        drop(rx);
        drop(q2);
        drop(tx);
        drop(q1);
    }
    assert!(
        weak.upgrade().is_none(),
        "context closed once everything is gone"
    );

    // 2. Children first, parents last; QPs with receives outstanding and never connected.
    let ctx = Context::open_by_name(&dev_name(), 1, None).unwrap();
    let weak = Rc::downgrade(&ctx);
    {
        let pd = ProtectionDomain::new(&ctx).unwrap();
        let scq = CompletionQueue::new(&ctx, 64).unwrap();
        let rcq = CompletionQueue::new(&ctx, 64).unwrap();
        let q = QueuePair::new(&pd, &scq, &rcq, None, QpConfig::default()).unwrap();
        let rx = MemoryRegion::new(&pd, 1024, Access::LOCAL_WRITE).unwrap();
        let sge = rx.sge(0..1024);
        // SAFETY: `rx` outlives `q` (dropped after it).
        unsafe { q.post_recv(&[RecvWr::new(1, &[sge]), RecvWr::new(2, &[sge])]) }.unwrap();
        let t0 = Instant::now();
        drop(q);
        let took = t0.elapsed();
        eprintln!("unconnected QP with 2 receives dropped in {took:?}");
        assert!(
            took < QpConfig::default().drain_timeout,
            "drain timed out instead of finishing"
        );
        let mut buf = vec![WorkCompletion::default(); 4];
        assert_eq!(
            rcq.poll(&mut buf).unwrap(),
            0,
            "flushes of a dropped QP leaked"
        );
        drop(rx);
        drop(rcq);
        drop(scq);
        drop(pd);
        // A memory region over caller-owned memory, dropped after its PD handle.
        let pd = ProtectionDomain::new(&ctx).unwrap();
        let mut own = vec![0u8; 8192];
        // SAFETY: `own` outlives `mr` (dropped first) and is not otherwise accessed meanwhile.
        let mr = unsafe {
            MemoryRegion::register_raw(&pd, own.as_mut_ptr(), own.len(), Access::LOCAL_WRITE)
        }
        .unwrap();
        drop(pd);
        assert_eq!(mr.len(), 8192);
        drop(mr);
        drop(own);
    }
    drop(ctx);
    assert!(weak.upgrade().is_none());
}

#[test]
fn receiver_without_receives_fails_the_send_with_rnr_retry_exceeded() {
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    let mut tx = MemoryRegion::new(&p.pd, 256, Access::NONE).unwrap();
    tx.as_mut_slice().fill(3);
    let sge = tx.sge(0..256);
    let t0 = Instant::now();
    // No receive posted on b. SAFETY: `tx` is unmodified until the completion below.
    unsafe { p.a.post_send(&[SendWr::send(1, &[sge])]) }.unwrap();
    let wc = wait_n(&p.cq_a, 1);
    // rnr_retry is bounded (not 7 = forever): exhaustion surfaces as an error completion.
    assert_eq!(wc[0].status(), WcStatus::RNR_RETRY_EXC_ERR, "{:?}", wc[0]);
    eprintln!(
        "RNR surfaced after {:?} (rnr_retry {}, min_rnr_timer {})",
        t0.elapsed(),
        QpConfig::default().rnr_retry,
        QpConfig::default().min_rnr_timer
    );
    assert_eq!(p.a.query_state().unwrap(), QpState::Err);
}

#[test]
fn write_with_a_deregistered_rkey_fails_with_remote_access_error() {
    // What the zero-copy pool relies on to keep a former peer out of a slab it re-registered
    // (`pool.rs`, "Trust"): the old rkey is dead once its region is deregistered, even though
    // the same memory is registered again.
    let Some(ctx) = open_dev() else { return };
    let p = pair(&ctx);
    const LEN: usize = 4096;
    let mut src = MemoryRegion::new(&p.pd, LEN, Access::NONE).unwrap();
    src.as_mut_slice().fill(5);
    let mut target = vec![0u8; LEN];
    let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
    // SAFETY: `target` outlives both regions (dropped at the end of the test, after them) and
    // is only read below once the writes have completed.
    let old =
        unsafe { MemoryRegion::register_raw(&p.pd, target.as_mut_ptr(), LEN, access) }.unwrap();
    let stale = old.remote();
    // SAFETY: as above. Registered before the old region goes, as the pool does.
    let fresh =
        unsafe { MemoryRegion::register_raw(&p.pd, target.as_mut_ptr(), LEN, access) }.unwrap();
    drop(old);
    assert_ne!(
        fresh.rkey(),
        stale.rkey,
        "a region registered afresh has a key of its own"
    );
    let sge = src.sge(0..LEN);
    // SAFETY: `src` and `target` stay alive and untouched until the completion.
    unsafe { p.a.post_send(&[SendWr::write(1, &[sge], fresh.remote())]) }.unwrap();
    assert_ok(&wait_n(&p.cq_a, 1)[0]);
    src.as_mut_slice().fill(9);
    let sge = src.sge(0..LEN);
    // SAFETY: as above; the target's old key is expected to be refused.
    unsafe { p.a.post_send(&[SendWr::write(2, &[sge], stale)]) }.unwrap();
    let wc = wait_n(&p.cq_a, 1);
    assert_eq!(wc[0].status(), WcStatus::REM_ACCESS_ERR, "{:?}", wc[0]);
    assert_eq!(p.a.query_state().unwrap(), QpState::Err);
    drop(fresh);
    assert!(
        target.iter().all(|&x| x == 5),
        "the stale key wrote nothing"
    );
}
