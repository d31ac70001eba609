//! Framed messages: parts and contiguous receives agree, over a real TCP pair.

use bytes::Bytes;
use corewire_runtime::Runtime;
use corewire_transport::framed::Framed;
use corewire_transport::tcp::TcpTransport;
use corewire_transport::{Endpoint, EndpointConfig, Listener, Transport};

#[test]
fn parts_and_contiguous_receives_carry_the_same_bytes() {
    let rt = Runtime::builder().cores(1).build().unwrap();
    let ok = rt.block_on(rt.spawn_on(0, || async {
        let t = TcpTransport::new(EndpointConfig::default());
        let l = t
            .listen(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let a = l.local_addr();
        let accept = corewire_runtime::spawn_local(async move { l.accept().await.unwrap() });
        let c = Framed::new(t.connect(&a).await.unwrap(), 8 << 20);
        let s = Framed::new(accept.await.unwrap(), 8 << 20);
        let big: Bytes = (0..(3 << 20) + 17)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>()
            .into();
        let small = Bytes::from_static(b"tiny");
        for m in [&big, &small, &big] {
            c.send_msg(vec![m.clone()]).await.unwrap();
        }
        let parts = s.recv_msg_parts().await.unwrap();
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, big[..]);
        assert_eq!(s.recv_msg().await.unwrap(), small);
        assert_eq!(s.recv_msg().await.unwrap(), big);
        c.endpoint().flush().await.unwrap();
        parts.len()
    }));
    assert!(ok.unwrap() >= 1);
    rt.shutdown().unwrap();
}
