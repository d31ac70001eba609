//! How fast an idle, spinning core iterates (ns per loop iteration).
fn main() {
    let rt = corewire_runtime::Runtime::builder()
        .cores(1)
        .never_park()
        .build()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let a = rt.stats(0).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let b = rt.stats(0).unwrap().since(&a);
    println!(
        "{} iterations/s, {:.0} ns each",
        b.loop_iterations,
        1e9 / b.loop_iterations as f64
    );
    rt.shutdown().unwrap();
}
