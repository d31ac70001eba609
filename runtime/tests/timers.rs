//! Timers fire in order; one-shot and periodic timers can be cancelled.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corewire_runtime::timer;

#[test]
fn timers_fire_in_deadline_order_and_cancel_works() {
    let rt = common::rt();
    let order = rt.block_on(rt.spawn_on(0, || async {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut ids = Vec::new();
        // Created in scrambled order; two share a deadline (creation order breaks the tie).
        for (label, ms) in [(3u32, 30u64), (1, 10), (4, 40), (2, 20), (5, 40), (9, 25)] {
            let l = log.clone();
            ids.push((
                label,
                timer::after(Duration::from_millis(ms), move || {
                    l.borrow_mut().push(label)
                }),
            ));
        }
        let (_, nine) = ids.iter().find(|(l, _)| *l == 9).copied().unwrap();
        assert!(timer::cancel(nine), "pending timer cancels");
        assert!(
            !timer::cancel(nine),
            "second cancel reports nothing pending"
        );
        timer::sleep(Duration::from_millis(80)).await;
        let v = log.borrow().clone();
        v
    }));
    assert_eq!(order.unwrap(), vec![1, 2, 3, 4, 5]);
    rt.shutdown().unwrap();
}

#[test]
fn periodic_timer_runs_until_cancelled_even_from_its_callback() {
    let rt = common::rt();
    let (count, stopped_at) = rt
        .block_on(rt.spawn_on(0, || async {
            let n = Rc::new(RefCell::new(0u32));
            let id = Rc::new(RefCell::new(None));
            let (n2, id2) = (n.clone(), id.clone());
            let t = timer::every(Duration::from_millis(2), move || {
                *n2.borrow_mut() += 1;
                if *n2.borrow() == 5 {
                    let me = id2.borrow().expect("id set");
                    assert!(timer::cancel(me));
                }
            });
            *id.borrow_mut() = Some(t);
            timer::sleep(Duration::from_millis(60)).await;
            let at5 = *n.borrow();
            timer::sleep(Duration::from_millis(20)).await;
            let total = *n.borrow();
            (total, at5)
        }))
        .unwrap();
    assert_eq!(stopped_at, 5);
    assert_eq!(count, 5, "no tick after self-cancel");
    rt.shutdown().unwrap();
}

#[test]
fn sleep_and_timeout() {
    let rt = common::rt();
    let r = rt
        .block_on(rt.spawn_on(0, || async {
            let t0 = Instant::now();
            timer::sleep(Duration::from_millis(15)).await;
            let slept = t0.elapsed();
            let late = timer::timeout(
                Duration::from_millis(5),
                timer::sleep(Duration::from_secs(5)),
            )
            .await;
            let early = timer::timeout(Duration::from_secs(5), async { 7 }).await;
            (slept, late, early)
        }))
        .unwrap();
    assert!(
        r.0 >= Duration::from_millis(15),
        "sleep returned early: {:?}",
        r.0
    );
    assert_eq!(r.1, Err(timer::Elapsed));
    assert_eq!(r.2, Ok(7));
    rt.shutdown().unwrap();
}

/// A sleep raced against a busy future (as a session's idle watchdog is against its reader)
/// is polled on every wake-up of the task: it stays pending until its deadline however often
/// it is polled, then completes, and stays complete when polled again.
#[test]
fn a_sleep_polled_again_and_again_completes_at_its_deadline() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    let rt = common::rt();
    let r = rt
        .block_on(rt.spawn_on(0, || async {
            let t0 = Instant::now();
            let mut sleep = pin!(timer::sleep(Duration::from_millis(20)));
            let mut polls = 0u64;
            // Poll, yield (waking ourselves, so the task runs again next loop turn), repeat.
            let done_after = std::future::poll_fn(|cx| {
                polls += 1;
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(t0.elapsed()),
                    Poll::Pending => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            })
            .await;
            let again = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
            (done_after, polls, again)
        }))
        .unwrap();
    assert!(
        r.0 >= Duration::from_millis(20),
        "completed early: {:?}",
        r.0
    );
    assert!(r.1 > 10, "the sleep was polled only {} times", r.1);
    assert_eq!(
        r.2,
        Poll::Ready(()),
        "a completed sleep polled again must stay complete"
    );
    rt.shutdown().unwrap();
}
