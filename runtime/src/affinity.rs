//! CPU affinity: which CPUs this process may use, choosing the CPUs for the
//! runtime's core threads, and pinning a thread to one CPU.
//!
//! The allowed set comes from `sched_getaffinity`, so it honours `taskset`,
//! cgroup cpusets and container CPU limits expressed as cpusets.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use crate::error::{Result, RuntimeError};
use crate::topology::Topology;

/// Which CPUs the runtime should run its core threads on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSelection {
    /// Any `n` allowed CPUs, one physical core each as far as possible.
    Count(usize),
    /// Exactly these CPUs, in this order.
    Cpus(Vec<usize>),
}

/// Largest affinity mask tried, in bits (the kernel's NR_CPUS is at most 8192 today).
const MAX_MASK_BITS: usize = 1 << 20;

/// CPUs the calling thread may run on (`sched_getaffinity`), ascending.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    const WORD_BITS: usize = u64::BITS as usize;
    // Start at glibc's cpu_set_t size and grow while the kernel says EINVAL
    // (its mask is larger than ours).
    let mut words = std::mem::size_of::<libc::cpu_set_t>() / std::mem::size_of::<u64>();
    loop {
        let mut mask = vec![0u64; words];
        let bytes = words * std::mem::size_of::<u64>();
        // SAFETY: `mask` is a writable buffer of `bytes` bytes, suitably
        // aligned for cpu_set_t (a plain array of unsigned longs); the kernel
        // writes at most `bytes` bytes into it.
        let rc = unsafe { libc::sched_getaffinity(0, bytes, mask.as_mut_ptr().cast()) };
        if rc == 0 {
            let cpus = mask
                .iter()
                .enumerate()
                .flat_map(|(w, &bits)| {
                    (0..WORD_BITS)
                        .filter(move |b| bits & (1u64 << b) != 0)
                        .map(move |b| w * WORD_BITS + b)
                })
                .collect();
            return Ok(cpus);
        }
        let errno = io::Error::last_os_error().raw_os_error();
        if errno != Some(libc::EINVAL) || words * WORD_BITS >= MAX_MASK_BITS {
            return Err(RuntimeError::sys("sched_getaffinity"));
        }
        words *= 2;
    }
}

/// Chooses the CPUs for the runtime's core threads among `allowed`.
///
/// * `Count(n)`: `n` allowed CPUs, returned ascending. With a topology, one
///   CPU of every physical core is taken before any SMT sibling; without one,
///   the lowest-numbered CPUs. Errors: `n == 0` is a `Config` error, more than
///   `allowed` holds is `NotEnoughCores`.
/// * `Cpus(v)`: `v` as given, after checking it is non-empty, free of
///   duplicates (`Config` errors) and inside `allowed` (`CpuNotAllowed`).
pub fn select_cpus(
    sel: &CoreSelection,
    allowed: &[usize],
    topo: Option<&Topology>,
) -> Result<Vec<usize>> {
    let allowed: Vec<usize> = allowed
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match sel {
        CoreSelection::Count(0) => Err(RuntimeError::Config(
            "core count must be at least 1".to_owned(),
        )),
        &CoreSelection::Count(n) if n > allowed.len() => Err(RuntimeError::NotEnoughCores {
            requested: n,
            available: allowed.len(),
            allowed,
        }),
        &CoreSelection::Count(n) => {
            let mut chosen = match topo {
                Some(topo) => spread_over_cores(&allowed, topo),
                None => allowed,
            };
            chosen.truncate(n);
            chosen.sort_unstable();
            Ok(chosen)
        }
        CoreSelection::Cpus(cpus) => {
            if cpus.is_empty() {
                return Err(RuntimeError::Config("empty CPU list".to_owned()));
            }
            let mut seen = BTreeSet::new();
            for &cpu in cpus {
                if allowed.binary_search(&cpu).is_err() {
                    return Err(RuntimeError::CpuNotAllowed { cpu, allowed });
                }
                if !seen.insert(cpu) {
                    return Err(RuntimeError::Config(format!(
                        "cpu {cpu} appears more than once in {cpus:?}"
                    )));
                }
            }
            Ok(cpus.clone())
        }
    }
}

/// Orders `allowed` (ascending) so that the first PU of every physical core
/// comes before any second PU, and so on. CPUs unknown to `topo` count as
/// cores of their own.
fn spread_over_cores(allowed: &[usize], topo: &Topology) -> Vec<usize> {
    // Physical core key -> its allowed PUs, ascending.
    let mut cores: BTreeMap<(usize, usize, usize), Vec<usize>> = BTreeMap::new();
    for &cpu in allowed {
        let key = match topo.cpu(cpu) {
            Some(info) => (info.package, info.core_id, usize::MAX),
            None => (usize::MAX, usize::MAX, cpu),
        };
        cores.entry(key).or_default().push(cpu);
    }
    // Visit cores by their lowest PU so the result stays close to ascending.
    let mut groups: Vec<Vec<usize>> = cores.into_values().collect();
    groups.sort_unstable_by_key(|g| g.first().copied());
    let rounds = groups.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|round| groups.iter().filter_map(move |g| g.get(round).copied()))
        .collect()
}

/// Pins the calling thread to `cpu`, which must be in [`allowed_cpus`], and
/// checks that the thread's mask is then exactly `{cpu}`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let allowed = allowed_cpus()?;
    if allowed.binary_search(&cpu).is_err() {
        return Err(RuntimeError::CpuNotAllowed { cpu, allowed });
    }
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        let os = io::Error::last_os_error();
        let source = match os.raw_os_error() {
            Some(code) if code != 0 => os,
            _ => io::Error::other("core_affinity::set_for_current refused"),
        };
        return Err(RuntimeError::Pin { cpu, source });
    }
    let now = allowed_cpus()?;
    if now != [cpu] {
        return Err(RuntimeError::Pin {
            cpu,
            source: io::Error::other(format!("affinity mask is {now:?} after pinning")),
        });
    }
    tracing::debug!(cpu, "pinned thread");
    Ok(())
}

/// The CPU the calling thread is running on right now (`sched_getcpu`).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only returns a value.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_selection() -> Result<()> {
        let allowed = [6, 0, 2, 4];
        assert_eq!(
            select_cpus(&CoreSelection::Count(2), &allowed, None)?,
            [0, 2]
        );
        assert_eq!(
            select_cpus(&CoreSelection::Count(4), &allowed, None)?,
            [0, 2, 4, 6]
        );
        assert!(matches!(
            select_cpus(&CoreSelection::Count(0), &allowed, None),
            Err(RuntimeError::Config(_))
        ));
        match select_cpus(&CoreSelection::Count(5), &allowed, None) {
            Err(RuntimeError::NotEnoughCores {
                requested: 5,
                available: 4,
                allowed,
            }) => {
                assert_eq!(allowed, [0, 2, 4, 6]);
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn explicit_selection() -> Result<()> {
        let allowed = [0, 1, 2, 3];
        assert_eq!(
            select_cpus(&CoreSelection::Cpus(vec![3, 1]), &allowed, None)?,
            [3, 1]
        );
        match select_cpus(&CoreSelection::Cpus(vec![1, 9]), &allowed, None) {
            Err(RuntimeError::CpuNotAllowed { cpu: 9, allowed }) => {
                assert_eq!(allowed, [0, 1, 2, 3])
            }
            other => panic!("{other:?}"),
        }
        for bad in [vec![], vec![1, 2, 1]] {
            assert!(matches!(
                select_cpus(&CoreSelection::Cpus(bad), &allowed, None),
                Err(RuntimeError::Config(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn count_selection_spreads_over_physical_cores() -> Result<()> {
        use crate::topology::{CpuInfo, TopologySource};
        // 2 cores x 2 threads, Linux-style numbering: siblings are (0,2) and (1,3).
        let cpu = |os_index, core_id| CpuInfo {
            os_index,
            core_id,
            package: 0,
            numa_node: None,
        };
        let topo = Topology::assemble(
            TopologySource::Sysfs,
            vec![cpu(0, 0), cpu(1, 1), cpu(2, 0), cpu(3, 1)],
            Vec::new(),
            Vec::new(),
            Vec::new(),
            "/nonexistent".into(),
        )?;
        let all = [0, 1, 2, 3];
        assert_eq!(
            select_cpus(&CoreSelection::Count(2), &all, Some(&topo))?,
            [0, 1]
        );
        assert_eq!(
            select_cpus(&CoreSelection::Count(3), &all, Some(&topo))?,
            [0, 1, 2]
        );
        // Only 0 and 2 (siblings) plus 3 allowed: 0 and 3 are on distinct cores.
        assert_eq!(
            select_cpus(&CoreSelection::Count(2), &[0, 2, 3], Some(&topo))?,
            [0, 3]
        );
        // A CPU the topology does not know counts as its own core.
        assert_eq!(
            select_cpus(&CoreSelection::Count(2), &[0, 2, 9], Some(&topo))?,
            [0, 9]
        );
        Ok(())
    }

    #[test]
    fn allowed_cpus_is_sorted_and_nonempty() -> Result<()> {
        let cpus = allowed_cpus()?;
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        Ok(())
    }
}
