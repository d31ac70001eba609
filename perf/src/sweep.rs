//! `corewire-perf sweep`: the in-process messenger benchmark (what `bench` runs) over a grid of
//! transports × cores × request sizes × requests in flight, one short run per point. Writes
//! `sweep.csv` (one row per point) and plots it ([`crate::plot`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corewire_messenger::DispatchMode;

use crate::msgr_bench::{listen_addr, run_in_process, ClientConfig, StopAfter};
use crate::transport_bench::{tokio_tcp, Workload};

/// Default request sizes: 64 B .. 4 MiB.
pub const DEFAULT_SIZES: &str = "64,512,4096,65536,1048576,4194304";
/// Default requests in flight per job.
pub const DEFAULT_CONCURRENCY: &str = "1,4,16,64";
/// Default cores per side.
pub const DEFAULT_CORES: &str = "1,2";

/// Parse a comma-separated list of positive integers, each optionally with a binary suffix
/// (`k`/`K`/`KiB` = 1024, `m`/`M`/`MiB` = 1024², `g`/`G`/`GiB` = 1024³): `64,4k,1MiB`.
/// Duplicates are dropped; the order is kept.
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in list {s:?}"));
        }
        let split = item
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(item.len());
        let (num, suffix) = item.split_at(split);
        let mult: usize = match suffix {
            "" => 1,
            "k" | "K" | "KiB" => 1 << 10,
            "m" | "M" | "MiB" => 1 << 20,
            "g" | "G" | "GiB" => 1 << 30,
            _ => return Err(format!("bad number {item:?} (use e.g. 4096, 4k or 4KiB)")),
        };
        let n: usize = num
            .parse()
            .map_err(|_| format!("bad number {item:?} (use e.g. 4096, 4k or 4KiB)"))?;
        let v = n
            .checked_mul(mult)
            .ok_or_else(|| format!("{item:?} is too large"))?;
        if v == 0 {
            return Err(format!("{item:?}: values must be > 0"));
        }
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// One size, as an item of [`parse_list`]: `4096`, `4k`, `4MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    match parse_list(s)?.as_slice() {
        [v] if !s.contains(',') => Ok(*v),
        _ => Err(format!("expected one size, got {s:?}")),
    }
}

/// `1024` → `1 KiB`, `64` → `64 B`, `1536` → `1.5 KiB`.
pub fn human_size(n: usize) -> String {
    const UNITS: [(&str, usize); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if n >= unit {
            return if n.is_multiple_of(unit) {
                format!("{} {name}", n / unit)
            } else {
                format!("{:.1} {name}", n as f64 / unit as f64)
            };
        }
    }
    format!("{n} B")
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// `tcp` or `shm`.
    pub transport: String,
    /// Cores of each runtime (client and server).
    pub cores: usize,
    /// Client jobs (messengers, one connection each).
    pub jobs: usize,
    pub msg_size: usize,
    /// Requests in flight per job.
    pub concurrency: usize,
}

/// What a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub transports: Vec<String>,
    pub sizes: Vec<usize>,
    pub concurrency: Vec<usize>,
    pub cores: Vec<usize>,
    /// Client jobs per point; `None`: as many as the point's cores.
    pub jobs: Option<usize>,
    /// Seconds measured per point (after a warm-up of a tenth of that, at least 0.1 s).
    pub secs: f64,
    /// Also run the tokio baseline at each point.
    pub baseline: bool,
    pub out: PathBuf,
    /// Progress bar on stderr (only when stdout and stderr are terminals).
    pub progress: bool,
}

impl SweepConfig {
    /// The grid, in run order: transport, then cores, then size, then concurrency.
    pub fn points(&self) -> Vec<Point> {
        let mut v = Vec::new();
        for t in &self.transports {
            for &cores in &self.cores {
                for &msg_size in &self.sizes {
                    for &concurrency in &self.concurrency {
                        v.push(Point {
                            transport: t.clone(),
                            cores,
                            jobs: self.jobs.unwrap_or(cores),
                            msg_size,
                            concurrency,
                        });
                    }
                }
            }
        }
        v
    }

    fn warmup(&self) -> Duration {
        (Duration::from_secs_f64(self.secs) / 10).max(Duration::from_millis(100))
    }
}

/// `target/corewire-perf/sweep-<unix time>` (relative to the current directory).
pub fn default_out_dir() -> PathBuf {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("target")
        .join("corewire-perf")
        .join(format!("sweep-{t}"))
}

/// The figures of one point (one CSV row).
#[derive(Debug, Clone, PartialEq)]
pub struct PointResult {
    pub point: Point,
    pub msgs: u64,
    pub elapsed_s: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub cpu_us_per_msg_client: f64,
    pub cpu_us_per_msg_server: Option<f64>,
    /// tokio baseline msgs/s for the same size and concurrency (`--baseline` only).
    pub tokio_msgs_per_sec: Option<f64>,
}

impl PointResult {
    pub fn ratio_to_tokio(&self) -> Option<f64> {
        self.tokio_msgs_per_sec.map(|t| self.msgs_per_sec / t)
    }
}

/// The CSV header (also the field order of each row).
pub const CSV_HEADER: &str = "transport,cores,jobs,msg_size,concurrency,msgs,elapsed_s,\
msgs_per_sec,mb_per_sec,p50_us,p99_us,p999_us,max_us,cpu_us_per_msg_client,\
cpu_us_per_msg_server,tokio_msgs_per_sec,ratio_to_tokio";

/// One CSV line (no newline). Missing values are empty fields.
pub fn csv_row(r: &PointResult) -> String {
    let opt = |v: Option<f64>, prec: usize| v.map_or(String::new(), |v| format!("{v:.prec$}"));
    let p = &r.point;
    format!(
        "{},{},{},{},{},{},{:.4},{:.1},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{}",
        p.transport,
        p.cores,
        p.jobs,
        p.msg_size,
        p.concurrency,
        r.msgs,
        r.elapsed_s,
        r.msgs_per_sec,
        r.mb_per_sec,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.cpu_us_per_msg_client,
        opt(r.cpu_us_per_msg_server, 3),
        opt(r.tokio_msgs_per_sec, 1),
        opt(r.ratio_to_tokio(), 3),
    )
}

/// Write the header and one line per result.
pub fn write_csv(mut w: impl Write, rows: &[PointResult]) -> io::Result<()> {
    writeln!(w, "{CSV_HEADER}")?;
    for r in rows {
        writeln!(w, "{}", csv_row(r))?;
    }
    w.flush()
}

/// Read a CSV written by [`write_csv`] (for re-plotting).
pub fn read_csv(r: impl BufRead) -> io::Result<Vec<PointResult>> {
    let bad = |line: usize, what: &str| io::Error::other(format!("sweep csv line {line}: {what}"));
    let mut lines = r.lines();
    let header = lines.next().transpose()?.unwrap_or_default();
    if header.trim() != CSV_HEADER {
        return Err(bad(1, "unexpected header"));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 2;
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != CSV_HEADER.split(',').count() {
            return Err(bad(n, "wrong field count"));
        }
        let int = |k: usize| f[k].parse::<u64>().map_err(|_| bad(n, "bad integer"));
        let num = |k: usize| f[k].parse::<f64>().map_err(|_| bad(n, "bad number"));
        let opt = |k: usize| -> io::Result<Option<f64>> {
            if f[k].is_empty() {
                Ok(None)
            } else {
                num(k).map(Some)
            }
        };
        out.push(PointResult {
            point: Point {
                transport: f[0].to_string(),
                cores: int(1)? as usize,
                jobs: int(2)? as usize,
                msg_size: int(3)? as usize,
                concurrency: int(4)? as usize,
            },
            msgs: int(5)?,
            elapsed_s: num(6)?,
            msgs_per_sec: num(7)?,
            mb_per_sec: num(8)?,
            p50_us: num(9)?,
            p99_us: num(10)?,
            p999_us: num(11)?,
            max_us: num(12)?,
            cpu_us_per_msg_client: num(13)?,
            cpu_us_per_msg_server: opt(14)?,
            tokio_msgs_per_sec: opt(15)?,
        });
    }
    Ok(out)
}

/// Read `path` (a `sweep.csv`).
pub fn read_csv_file(path: &Path) -> io::Result<Vec<PointResult>> {
    read_csv(BufReader::new(File::open(path)?))
}

/// Run one point: the in-process messenger benchmark, then (if asked) the tokio baseline.
pub fn run_point(cfg: &SweepConfig, p: &Point) -> io::Result<PointResult> {
    let measure = Duration::from_secs_f64(cfg.secs);
    let ccfg = ClientConfig {
        jobs: p.jobs,
        concurrency: p.concurrency,
        msg_size: p.msg_size,
        think: Duration::ZERO,
        stop: StopAfter::Time {
            warmup: cfg.warmup(),
            measure,
        },
        progress: false,
    };
    let r = run_in_process(
        &listen_addr(&p.transport)?,
        p.cores,
        Duration::ZERO,
        DispatchMode::Sharded,
        &ccfg,
    )?;
    if r.msgs == 0 {
        return Err(io::Error::other("no reply within the measured interval"));
    }
    let tokio_msgs_per_sec = if cfg.baseline {
        let m = tokio_tcp(
            Workload::Stream {
                size: p.msg_size,
                inflight: p.concurrency,
            },
            measure,
        )?;
        Some(m.ops as f64 / m.elapsed.as_secs_f64().max(1e-9))
    } else {
        None
    };
    let q = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(PointResult {
        point: p.clone(),
        msgs: r.msgs,
        elapsed_s: r.elapsed.as_secs_f64(),
        msgs_per_sec: r.msgs_per_sec(),
        mb_per_sec: r.mb_per_sec(),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: r.hist.max() as f64 / 1000.0,
        cpu_us_per_msg_client: r.cpu_us_per_msg_client(),
        cpu_us_per_msg_server: r.cpu_us_per_msg_server(),
        tokio_msgs_per_sec,
    })
}

/// What a sweep wrote.
#[derive(Debug)]
pub struct SweepOutput {
    pub csv: PathBuf,
    pub plots: Vec<PathBuf>,
    pub rows: Vec<PointResult>,
    /// Points that failed (with the error), left out of the CSV.
    pub failed: Vec<(Point, String)>,
}

fn point_line(r: &PointResult) -> String {
    let p = &r.point;
    let mut s = format!(
        "{} cores {} jobs {} {:>8} x{:<3}: {:>9.0} msgs/s {:>8.1} MB/s  p50 {:.1} p99 {:.1} µs  cpu µs/msg client {:.2} server {}",
        p.transport,
        p.cores,
        p.jobs,
        human_size(p.msg_size),
        p.concurrency,
        r.msgs_per_sec,
        r.mb_per_sec,
        r.p50_us,
        r.p99_us,
        r.cpu_us_per_msg_client,
        r.cpu_us_per_msg_server
            .map_or("-".to_string(), |v| format!("{v:.2}")),
    );
    if let (Some(t), Some(ratio)) = (r.tokio_msgs_per_sec, r.ratio_to_tokio()) {
        s += &format!("  tokio {t:.0} msgs/s (ratio {ratio:.2})");
    }
    s
}

/// Run every point, writing `sweep.csv` as rows come in (so an interrupted sweep keeps what it
/// measured), then the plots. A point that fails is reported and skipped.
pub fn run(cfg: &SweepConfig) -> io::Result<SweepOutput> {
    if !(cfg.secs > 0.0 && cfg.secs.is_finite()) {
        return Err(io::Error::other("--secs must be > 0"));
    }
    for &c in &cfg.cores {
        crate::msgr_bench::in_process_cpus(c)?;
    }
    let points = cfg.points();
    if points.is_empty() {
        return Err(io::Error::other("empty grid"));
    }
    std::fs::create_dir_all(&cfg.out)?;
    let csv_path = cfg.out.join("sweep.csv");
    let mut csv = io::BufWriter::new(File::create(&csv_path)?);
    writeln!(csv, "{CSV_HEADER}")?;
    csv.flush()?;

    let per_point = cfg.secs * if cfg.baseline { 2.0 } else { 1.0 } + cfg.warmup().as_secs_f64();
    println!(
        "corewire-perf sweep: {} points ({} transport(s) x {} core count(s) x {} size(s) x {} concurrency level(s)), \
{:.2} s measured per point, about {:.0} s in all; writing {}",
        points.len(),
        cfg.transports.len(),
        cfg.cores.len(),
        cfg.sizes.len(),
        cfg.concurrency.len(),
        cfg.secs,
        points.len() as f64 * (per_point + 0.1),
        cfg.out.display()
    );
    let pb =
        (cfg.progress && io::stdout().is_terminal() && io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new(points.len() as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} eta {eta} {msg}")
                    .expect("valid template"),
            );
            pb
        });
    let say = |s: String| match &pb {
        Some(pb) => pb.println(s),
        None => println!("{s}"),
    };
    let width = points.len().to_string().len();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let started = Instant::now();
    for (i, p) in points.iter().enumerate() {
        if let Some(pb) = &pb {
            pb.set_message(format!(
                "{} cores {} {} x{}",
                p.transport,
                p.cores,
                human_size(p.msg_size),
                p.concurrency
            ));
        }
        let tag = format!("[{:>width$}/{}]", i + 1, points.len());
        match run_point(cfg, p) {
            Ok(r) => {
                say(format!("{tag} {}", point_line(&r)));
                writeln!(csv, "{}", csv_row(&r))?;
                csv.flush()?;
                rows.push(r);
            }
            Err(e) => {
                say(format!(
                    "{tag} {} cores {} jobs {} {} x{}: FAILED: {e}",
                    p.transport,
                    p.cores,
                    p.jobs,
                    human_size(p.msg_size),
                    p.concurrency
                ));
                failed.push((p.clone(), e.to_string()));
            }
        }
        if let Some(pb) = &pb {
            pb.inc(1);
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    drop(csv);
    let plots = crate::plot::plot_all(&rows, &cfg.out, cfg.secs)?;
    println!(
        "{} of {} points measured in {:.1} s",
        rows.len(),
        points.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(SweepOutput {
        csv: csv_path,
        plots,
        rows,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(size: usize, conc: usize, server: Option<f64>) -> PointResult {
        PointResult {
            point: Point {
                transport: "tcp".into(),
                cores: 1,
                jobs: 1,
                msg_size: size,
                concurrency: conc,
            },
            msgs: 1234,
            elapsed_s: 0.5,
            msgs_per_sec: 2468.0,
            mb_per_sec: 10.109,
            p50_us: 12.5,
            p99_us: 40.25,
            p999_us: 80.0,
            max_us: 120.0,
            cpu_us_per_msg_client: 3.5,
            cpu_us_per_msg_server: server,
            tokio_msgs_per_sec: None,
        }
    }

    #[test]
    fn parse_list_plain_and_suffixes() {
        assert_eq!(
            parse_list(DEFAULT_SIZES).unwrap(),
            vec![64, 512, 4096, 65536, 1 << 20, 4 << 20]
        );
        assert_eq!(
            parse_list("64, 4k,4KiB,1M,2MiB,1G").unwrap(),
            vec![64, 4096, 1 << 20, 2 << 20, 1 << 30]
        );
        assert_eq!(parse_list("16").unwrap(), vec![16]);
        assert_eq!(parse_list("4,1,4").unwrap(), vec![4, 1]);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1,2").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn parse_list_rejects_bad_items() {
        for bad in [
            "",
            "1,,2",
            "0",
            "4x",
            "k",
            "-1",
            "1.5",
            "99999999999999999999",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn grid_is_the_cross_product_in_run_order() {
        let cfg = SweepConfig {
            transports: vec!["tcp".into(), "shm".into()],
            sizes: parse_list("64,4k").unwrap(),
            concurrency: parse_list("1,16").unwrap(),
            cores: parse_list("1,2").unwrap(),
            jobs: None,
            secs: 0.1,
            baseline: false,
            out: PathBuf::from("unused"),
            progress: false,
        };
        let pts = cfg.points();
        assert_eq!(pts.len(), 16);
        let key = |p: &Point| (p.transport.clone(), p.cores, p.msg_size, p.concurrency);
        assert_eq!(key(&pts[0]), ("tcp".into(), 1, 64, 1));
        assert_eq!(key(&pts[1]), ("tcp".into(), 1, 64, 16));
        assert_eq!(key(&pts[2]), ("tcp".into(), 1, 4096, 1));
        assert_eq!(key(&pts[4]), ("tcp".into(), 2, 64, 1));
        assert_eq!(key(&pts[15]), ("shm".into(), 2, 4096, 16));
        // Jobs follow the cores unless fixed.
        assert!(pts.iter().all(|p| p.jobs == p.cores));
        let fixed = SweepConfig {
            jobs: Some(3),
            ..cfg
        };
        assert!(fixed.points().iter().all(|p| p.jobs == 3));
    }

    #[test]
    fn csv_header_and_rows() {
        let mut with_base = result(4096, 16, Some(7.25));
        with_base.tokio_msgs_per_sec = Some(1234.0);
        let rows = vec![result(64, 1, None), with_base];
        let mut buf = Vec::new();
        write_csv(&mut buf, &rows).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[0].starts_with("transport,cores,jobs,msg_size,concurrency,"));
        assert_eq!(
            lines[1],
            "tcp,1,1,64,1,1234,0.5000,2468.0,10.109,12.500,40.250,80.000,120.000,3.500,,,"
        );
        assert_eq!(
            lines[2],
            "tcp,1,1,4096,16,1234,0.5000,2468.0,10.109,12.500,40.250,80.000,120.000,3.500,7.250,1234.0,2.000"
        );
        let ncols = CSV_HEADER.split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == ncols));
        // Round trip.
        let back = read_csv(text.as_bytes()).unwrap();
        assert_eq!(back, rows);
        assert!(read_csv("a,b\n".as_bytes()).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(64), "64 B");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(4 << 20), "4 MiB");
    }
}
