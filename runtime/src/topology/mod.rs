//! Machine topology: logical CPUs, physical cores, NUMA nodes, CPU caches and
//! the locality of network / RDMA devices.
//!
//! Two sources are supported:
//!
//! * **hwloc** (cargo feature `hwloc`, on by default) through `hwlocality`,
//!   which also sees I/O devices through its PCI discovery;
//! * **sysfs** (`/sys/devices/system/{cpu,node}` and `/sys/class/{net,infiniband}`),
//!   always available on Linux and used as the fallback.
//!
//! [`Topology::detect`] picks hwloc when it is compiled in and loads, and sysfs
//! otherwise. Both describe every *online* CPU of the machine, including CPUs
//! that this process may not run on (cgroup cpusets, `taskset`): what the
//! process may use is [`crate::affinity::allowed_cpus`]'s business.
//!
//! [`Topology::from_sysfs_root`] and [`device_locality_in`] read a tree rooted
//! anywhere, so that tests can run against a fake `/sys`.

#[cfg(feature = "hwloc")]
mod hwloc;
mod sysfs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

pub use sysfs::{device_locality_in, list_devices_in};

/// Largest CPU number [`parse_cpu_list`] accepts (guards against absurd ranges).
const MAX_CPU: usize = 1 << 20;

/// Where a [`Topology`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopologySource {
    /// The hwloc library.
    Hwloc,
    /// Linux sysfs.
    Sysfs,
}

/// One logical CPU (hwloc "PU", a hardware thread).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuInfo {
    /// Kernel logical CPU number, as used by `sched_setaffinity`.
    pub os_index: usize,
    /// Core number within its package (sysfs `core_id`; not globally unique).
    pub core_id: usize,
    /// Physical package (socket) number.
    pub package: usize,
    /// NUMA node holding this CPU, when known.
    pub numa_node: Option<usize>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NumaNode {
    /// Kernel NUMA node number.
    pub os_index: usize,
    /// Online CPUs local to this node, ascending (empty for memory-only nodes).
    pub cpus: Vec<usize>,
    /// Memory local to this node, when known.
    pub memory_bytes: Option<u64>,
}

/// What a CPU cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKind {
    /// Data only.
    Data,
    /// Instructions only.
    Instruction,
    /// Data and instructions.
    Unified,
}

/// One CPU cache instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheInfo {
    /// Cache level (1 for L1, ...).
    pub level: u8,
    /// Data, instruction or unified.
    pub kind: CacheKind,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Line size in bytes, when known.
    pub line_size: Option<u32>,
    /// Online CPUs sharing this cache, ascending.
    pub cpus: Vec<usize>,
}

/// Kind of device [`Topology::device_locality`] can locate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// A network interface (`/sys/class/net`).
    Net,
    /// An RDMA device (`/sys/class/infiniband`).
    Infiniband,
}

/// Where a device sits relative to CPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceLocality {
    /// Device name (`eth0`, `mlx5_0`, ...).
    pub name: String,
    /// Network interface or RDMA device.
    pub class: DeviceClass,
    /// NUMA node the device is attached to; `None` when unknown or not specific.
    pub numa_node: Option<usize>,
    /// Online CPUs close to the device, ascending (all online CPUs when unknown).
    pub local_cpus: Vec<usize>,
    /// PCI address (`0000:00:03.0`) of the device or of its nearest PCI parent.
    pub pci_address: Option<String>,
}

/// A snapshot of the machine's topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    source: TopologySource,
    /// Sorted by `os_index`.
    cpus: Vec<CpuInfo>,
    /// Sorted by `os_index`.
    numa_nodes: Vec<NumaNode>,
    caches: Vec<CacheInfo>,
    /// Network and RDMA devices found by hwloc (empty for sysfs).
    devices: Vec<DeviceLocality>,
    /// Root of the sysfs tree used for device look-ups that hwloc cannot answer.
    sysfs_root: PathBuf,
}

impl Topology {
    /// Detects the topology of this machine: through hwloc when the `hwloc`
    /// feature is on and hwloc loads, through sysfs otherwise.
    pub fn detect() -> Result<Topology> {
        #[cfg(feature = "hwloc")]
        match Self::from_hwloc() {
            Ok(topo) => return Ok(topo),
            Err(error) => {
                tracing::warn!(%error, "hwloc topology discovery failed; falling back to sysfs");
            }
        }
        Self::from_sysfs()
    }

    /// Reads the topology from `/sys`.
    pub fn from_sysfs() -> Result<Topology> {
        Self::from_sysfs_root(Path::new("/"))
    }

    /// Reads the topology from a sysfs tree under `root` (`root/sys/devices/system/cpu`, ...).
    pub fn from_sysfs_root(root: &Path) -> Result<Topology> {
        let topo = sysfs::load(root)?;
        tracing::debug!(
            cpus = topo.cpus.len(),
            nodes = topo.numa_nodes.len(),
            "sysfs topology"
        );
        Ok(topo)
    }

    /// Reads the topology through hwloc, with I/O device discovery.
    #[cfg(feature = "hwloc")]
    pub fn from_hwloc() -> Result<Topology> {
        let topo = hwloc::load()?;
        tracing::debug!(
            cpus = topo.cpus.len(),
            nodes = topo.numa_nodes.len(),
            devices = topo.devices.len(),
            "hwloc topology"
        );
        Ok(topo)
    }

    /// Assembles a topology, sorting CPUs and nodes and filling in each CPU's
    /// NUMA node from the node CPU lists.
    pub(crate) fn assemble(
        source: TopologySource,
        mut cpus: Vec<CpuInfo>,
        mut numa_nodes: Vec<NumaNode>,
        caches: Vec<CacheInfo>,
        devices: Vec<DeviceLocality>,
        sysfs_root: PathBuf,
    ) -> Result<Topology> {
        if cpus.is_empty() {
            return Err(RuntimeError::Topology(format!(
                "{source:?}: no online CPU found"
            )));
        }
        cpus.sort_by_key(|c| c.os_index);
        cpus.dedup_by_key(|c| c.os_index);
        numa_nodes.sort_by_key(|n| n.os_index);
        for cpu in &mut cpus {
            cpu.numa_node = numa_nodes
                .iter()
                .find(|n| n.cpus.binary_search(&cpu.os_index).is_ok())
                .map(|n| n.os_index);
        }
        Ok(Topology {
            source,
            cpus,
            numa_nodes,
            caches,
            devices,
            sysfs_root,
        })
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// Online logical CPUs, ascending by `os_index`.
    pub fn cpus(&self) -> &[CpuInfo] {
        &self.cpus
    }

    /// NUMA nodes, ascending by `os_index` (at least one on Linux).
    pub fn numa_nodes(&self) -> &[NumaNode] {
        &self.numa_nodes
    }

    /// CPU caches, one entry per cache instance.
    pub fn caches(&self) -> &[CacheInfo] {
        &self.caches
    }

    /// NUMA node of logical CPU `cpu`, if the CPU is online and on a known node.
    pub fn numa_node_of_cpu(&self, cpu: usize) -> Option<usize> {
        self.cpu(cpu).and_then(|c| c.numa_node)
    }

    /// Information about logical CPU `cpu`, if online.
    pub fn cpu(&self, cpu: usize) -> Option<&CpuInfo> {
        self.cpus
            .binary_search_by_key(&cpu, |c| c.os_index)
            .ok()
            .and_then(|i| self.cpus.get(i))
    }

    /// Number of physical cores: distinct `(package, core_id)` pairs.
    pub fn physical_cores(&self) -> usize {
        self.cpus
            .iter()
            .map(|c| (c.package, c.core_id))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// NUMA node and local CPUs of network interface or RDMA device `name`.
    ///
    /// hwloc's I/O objects are consulted first (hwloc topologies only), then
    /// sysfs. `local_cpus` is restricted to this topology's CPUs (all of them
    /// when the device has no known locality). When the machine has a single
    /// NUMA node, every device is reported on it.
    pub fn device_locality(&self, name: &str) -> Result<DeviceLocality> {
        let mut dev = match self.devices.iter().find(|d| d.name == name) {
            Some(dev) => dev.clone(),
            None => sysfs::device_locality_in(&self.sysfs_root, name)?,
        };
        let all = self.cpu_ids();
        dev.local_cpus.retain(|c| all.binary_search(c).is_ok());
        if dev.local_cpus.is_empty() {
            dev.local_cpus = all;
        }
        if let [only] = self.numa_nodes.as_slice() {
            dev.numa_node = Some(only.os_index);
        }
        Ok(dev)
    }

    /// All online CPU numbers, ascending.
    fn cpu_ids(&self) -> Vec<usize> {
        self.cpus.iter().map(|c| c.os_index).collect()
    }
}

/// Parses a kernel CPU list such as `"0-3,8,10-11\n"` into sorted, distinct
/// CPU numbers. An empty (or all-whitespace) list gives an empty vector.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let malformed = |why: &str| RuntimeError::Topology(format!("malformed CPU list {s:?}: {why}"));
    let parse_num = |t: &str| -> Result<usize> {
        let n: usize = t
            .trim()
            .parse()
            .map_err(|_| malformed(&format!("{t:?} is not a CPU number")))?;
        if n > MAX_CPU {
            return Err(malformed(&format!("CPU {n} is beyond {MAX_CPU}")));
        }
        Ok(n)
    };
    let trimmed = s.trim();
    let mut cpus = BTreeSet::new();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    for part in trimmed.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse_num(lo)?, parse_num(hi)?);
                if lo > hi {
                    return Err(malformed(&format!("range {lo}-{hi} is reversed")));
                }
                cpus.extend(lo..=hi);
            }
            None => {
                cpus.insert(parse_num(part)?);
            }
        }
    }
    Ok(cpus.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() -> Result<()> {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n")?,
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5")?, vec![5]);
        assert_eq!(parse_cpu_list("3,1-2,2,0-1")?, vec![0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("7-7")?, vec![7]);
        assert_eq!(parse_cpu_list("")?, Vec::<usize>::new());
        assert_eq!(parse_cpu_list(" \n")?, Vec::<usize>::new());
        Ok(())
    }

    #[test]
    fn rejects_malformed_cpu_lists() {
        for bad in [
            "a",
            "1-",
            "-1",
            "3-1",
            "1,,2",
            "1-2-3",
            "0-99999999",
            "0x1",
            "1 2",
        ] {
            match parse_cpu_list(bad) {
                Err(RuntimeError::Topology(msg)) => {
                    assert!(
                        msg.contains(&format!("{bad:?}")),
                        "{msg} should quote {bad:?}"
                    );
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn physical_cores_and_numa_lookup() -> Result<()> {
        let cpu = |os_index, core_id, package| CpuInfo {
            os_index,
            core_id,
            package,
            numa_node: None,
        };
        let topo = Topology::assemble(
            TopologySource::Sysfs,
            vec![cpu(3, 1, 1), cpu(0, 0, 0), cpu(1, 0, 0), cpu(2, 0, 1)],
            vec![
                NumaNode {
                    os_index: 1,
                    cpus: vec![2, 3],
                    memory_bytes: None,
                },
                NumaNode {
                    os_index: 0,
                    cpus: vec![0, 1],
                    memory_bytes: Some(1 << 30),
                },
            ],
            Vec::new(),
            Vec::new(),
            PathBuf::from("/nonexistent"),
        )?;
        assert_eq!(topo.physical_cores(), 3);
        assert_eq!(
            topo.cpus().iter().map(|c| c.os_index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(topo.numa_nodes()[0].os_index, 0);
        assert_eq!(topo.numa_node_of_cpu(1), Some(0));
        assert_eq!(topo.numa_node_of_cpu(3), Some(1));
        assert_eq!(topo.numa_node_of_cpu(4), None);
        Ok(())
    }
}
