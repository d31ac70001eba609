//! Kernel sockets on io_uring: TCP echo across cores, hand-off of an accepted stream,
//! cancellation of in-flight reads, Unix fd passing, and fd readiness.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use corewire_runtime::net::{readable, TcpListener, TcpStream, UnixStream};
use corewire_runtime::{current_core, spawn_local, timer};

async fn read_exact(s: &TcpStream, n: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        let want = n - buf.len();
        let chunk = Vec::with_capacity(want);
        let (r, chunk) = s.read(chunk).await;
        let got = r.expect("read");
        assert!(got > 0, "unexpected EOF after {} bytes", buf.len());
        buf.extend_from_slice(&chunk);
    }
    buf
}

#[test]
fn tcp_echo_between_two_cores_byte_exact() {
    let rt = common::rt();
    let server_core = rt.cores() - 1;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let server = rt.spawn_on(server_core, move || async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        addr_tx.send(l.local_addr()).unwrap();
        let (s, _peer) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut total = 0usize;
        loop {
            let (r, buf) = s.read(Vec::with_capacity(64 * 1024)).await;
            let n = r.unwrap();
            if n == 0 {
                break total;
            }
            total += n;
            let (w, _) = s.write_all(buf).await;
            w.unwrap();
        }
    });
    let addr = addr_rx.recv().unwrap();
    let client = rt.spawn_on(0, move || async move {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        assert!(s.nodelay().unwrap());
        let mut sent = 0usize;
        for size in [1usize, 100, 4096, 65536, 1 << 20] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            // Vectored send in three pieces.
            let a = payload[..size / 3].to_vec();
            let b = payload[size / 3..2 * size / 3].to_vec();
            let c = payload[2 * size / 3..].to_vec();
            let (w, _) = s.writev_all(vec![a, b, c]).await;
            w.unwrap();
            let back = read_exact(&s, size).await;
            assert_eq!(back, payload, "echo of {size} bytes differs");
            sent += size;
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        sent
    });
    let sent = rt.block_on(client).unwrap();
    assert_eq!(rt.block_on(server).unwrap(), sent);
    rt.shutdown().unwrap();
}

#[test]
fn accepted_stream_can_move_to_another_core() {
    let rt = common::rt();
    let target = rt.cores() - 1;
    let h = rt.handle();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        back
    });
    let (s, _) = std_listener.accept().unwrap();
    // Accept on core 0, hand the fd to `target`, serve it there.
    let done = rt.block_on(rt.spawn_on(0, move || async move {
        let stream = TcpStream::from_std(s).unwrap().into_std();
        h.spawn_on(target, move || async move {
            assert_eq!(current_core(), Some(target));
            let s = TcpStream::from_std(stream).unwrap();
            let got = read_exact(&s, 5).await;
            let (w, _) = s.write_all(got).await;
            w.unwrap();
            true
        })
        .await
        .unwrap()
    }));
    assert!(done.unwrap());
    assert_eq!(&client.join().unwrap(), b"hello");
    rt.shutdown().unwrap();
}

#[test]
fn dropped_read_is_cancelled_and_stream_stays_usable() {
    let rt = common::rt();
    let r = rt.block_on(rt.spawn_on(0, || async {
        let (a, b) = UnixStream::pair().unwrap();
        // A read that cannot complete, abandoned by a timeout.
        let t = timer::timeout(Duration::from_millis(20), a.read(Vec::with_capacity(16))).await;
        assert!(t.is_err());
        let (w, _) = b.write_all(b"after".to_vec()).await;
        w.unwrap();
        let (r, buf) = a.read(Vec::with_capacity(16)).await;
        r.unwrap();
        buf
    }));
    assert_eq!(r.unwrap(), b"after");
    rt.shutdown().unwrap();
}

#[test]
fn unix_socket_passes_file_descriptors() {
    let rt = common::rt();
    let dir = std::env::temp_dir().join(format!("corewire-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let out = rt.block_on(rt.spawn_on(0, move || async move {
        let l = corewire_runtime::net::UnixListener::bind(&path).unwrap();
        let p2 = path.clone();
        let client = spawn_local(async move { UnixStream::connect(&p2).await.unwrap() });
        let server = l.accept().await.unwrap();
        let client = client.await.unwrap();
        // Pass one end of a pipe; write into it here, read from the received fd.
        let (pr, mut pw) = std::io::pipe().unwrap();
        let (r, _) = client.send_with_fds(b"x".to_vec(), &[pr.as_raw_fd()]).await;
        assert_eq!(r.unwrap(), 1);
        drop(pr);
        let (r, buf) = server.recv_with_fds(Vec::with_capacity(8)).await;
        let (n, fds) = r.unwrap();
        assert_eq!((n, buf.as_slice()), (1, &b"x"[..]));
        assert_eq!(fds.len(), 1);
        pw.write_all(b"through the passed fd").unwrap();
        drop(pw);
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }));
    assert_eq!(out.unwrap(), "through the passed fd");
    let _ = std::fs::remove_dir_all(&dir);
    rt.shutdown().unwrap();
}

#[test]
fn readable_waits_for_any_fd() {
    let rt = common::rt();
    let (mut w, r) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = r.as_raw_fd();
    let h = rt.spawn_on(0, move || async move { readable(fd).await.unwrap() });
    std::thread::sleep(Duration::from_millis(20));
    w.write_all(b"!").unwrap();
    let mask = rt.block_on(h).unwrap();
    assert!(mask & libc::POLLIN != 0);
    drop(r);
    rt.shutdown().unwrap();
}

#[test]
fn connect_refused_is_an_error_not_a_hang() {
    let rt = common::rt();
    // Bind then drop to get a port with (almost certainly) no listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = rt.block_on(rt.spawn_on(0, move || async move {
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .err()
            .map(|e| e.kind())
    }));
    assert_eq!(r.unwrap(), Some(std::io::ErrorKind::ConnectionRefused));
    rt.shutdown().unwrap();
}

/// A peer that resets the connection (SO_LINGER 0, then close): the next vectored send fails
/// at its first, direct `sendmsg` with ECONNRESET or EPIPE (no SIGPIPE: MSG_NOSIGNAL), and
/// keeps failing; a peer that closes normally (FIN) makes a later send fail the same way
/// once its kernel has answered our data with RST. An error each time, never a hang.
#[test]
fn send_to_a_reset_or_closed_peer_is_an_error() {
    let rt = common::rt();
    for reset in [true, false] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (connected_tx, connected_rx) = std::sync::mpsc::channel::<()>();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            // Not before our side saw its connect complete (a reset racing the connect would
            // fail the connect instead).
            connected_rx.recv().unwrap();
            if reset {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: `s` is an open socket; `linger` is a valid option value of the
                // size given, read during the call only.
                let rc = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
            }
            drop(s);
            closed_tx.send(()).unwrap();
        });
        let kinds = rt.block_on(rt.spawn_on(0, move || async move {
            let s = TcpStream::connect(addr).await.unwrap();
            connected_tx.send(()).unwrap();
            closed_rx.recv().unwrap();
            // Let the RST or FIN arrive.
            timer::sleep(Duration::from_millis(50)).await;
            let mut kinds = Vec::new();
            for _ in 0..20 {
                let (r, _) = s.writev_all(vec![vec![1u8; 100], vec![2u8; 4000]]).await;
                if let Err(e) = r {
                    kinds.push(e.kind());
                    if kinds.len() == 2 {
                        break;
                    }
                }
                timer::sleep(Duration::from_millis(5)).await;
            }
            kinds
        }));
        peer.join().unwrap();
        let kinds = kinds.unwrap();
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        assert_eq!(
            kinds.len(),
            2,
            "reset={reset}: sends kept succeeding: {kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .all(|k| matches!(k, BrokenPipe | ConnectionReset)),
            "reset={reset}: {kinds:?}"
        );
        if reset {
            // The RST was there before the first send: its direct sendmsg already failed.
            assert_eq!(kinds[0], ConnectionReset, "{kinds:?}");
        }
    }
    rt.shutdown().unwrap();
}
