//! Topology and device locality read from Linux sysfs.
//!
//! Everything is read relative to a `root` directory standing for `/`, so the
//! same code runs against the real `/sys` and against fake trees in tests:
//!
//! * CPUs: `sys/devices/system/cpu/{online,cpuN/topology/{core_id,physical_package_id}}`
//! * caches: `sys/devices/system/cpu/cpuN/cache/indexK/{level,type,size,coherency_line_size,shared_cpu_list}`
//! * NUMA: `sys/devices/system/node/{online,nodeN/{cpulist,meminfo}}` (a single
//!   node 0 holding every CPU when the kernel has no NUMA support)
//! * devices: `sys/class/{net,infiniband}/NAME/device/{numa_node,local_cpulist}`

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    parse_cpu_list, CacheInfo, CacheKind, CpuInfo, DeviceClass, DeviceLocality, NumaNode, Topology,
    TopologySource,
};
use crate::error::{Result, RuntimeError};

const CPU_DIR: &str = "sys/devices/system/cpu";
const NODE_DIR: &str = "sys/devices/system/node";
const DEVICE_CLASSES: [(&str, DeviceClass); 2] = [
    ("sys/class/net", DeviceClass::Net),
    ("sys/class/infiniband", DeviceClass::Infiniband),
];

/// Reads a file, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::Topology(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// Reads an integer file, `None` if it does not exist.
fn read_int(path: &Path) -> Result<Option<i64>> {
    read_optional(path)?
        .map(|s| {
            s.trim().parse::<i64>().map_err(|_| {
                RuntimeError::Topology(format!(
                    "{}: expected an integer, got {s:?}",
                    path.display()
                ))
            })
        })
        .transpose()
}

/// Numbers `n` of the entries named `{prefix}{n}` in `dir`, ascending.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<usize> {
    let mut found: Vec<usize> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .parse()
                .ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// Online CPUs under `root`, from `cpu/online` or else from the `cpuN` directories.
pub(super) fn online_cpus(root: &Path) -> Result<Vec<usize>> {
    let dir = root.join(CPU_DIR);
    if let Some(list) = read_optional(&dir.join("online"))? {
        return parse_cpu_list(&list);
    }
    let mut online = Vec::new();
    for cpu in numbered_entries(&dir, "cpu") {
        // cpu0 often has no `online` file: it cannot be taken offline.
        if read_int(&dir.join(format!("cpu{cpu}/online")))? != Some(0) {
            online.push(cpu);
        }
    }
    Ok(online)
}

/// Reads the whole topology under `root`.
pub(super) fn load(root: &Path) -> Result<Topology> {
    let online = online_cpus(root)?;
    if online.is_empty() {
        return Err(RuntimeError::Topology(format!(
            "no online CPU under {}",
            root.join(CPU_DIR).display()
        )));
    }
    let cpu_dir = root.join(CPU_DIR);
    let mut cpus = Vec::with_capacity(online.len());
    for &cpu in &online {
        let topo_dir = cpu_dir.join(format!("cpu{cpu}/topology"));
        let core_id = read_int(&topo_dir.join("core_id"))?.map_or(cpu, |v| v.max(0) as usize);
        // `physical_package_id` is -1 on some platforms: call that package 0.
        let package = read_int(&topo_dir.join("physical_package_id"))?.map_or(0, |v| v.max(0));
        cpus.push(CpuInfo {
            os_index: cpu,
            core_id,
            package: package as usize,
            numa_node: None,
        });
    }
    let nodes = numa_nodes(root, &online)?;
    let caches = caches(&cpu_dir, &online)?;
    Topology::assemble(
        TopologySource::Sysfs,
        cpus,
        nodes,
        caches,
        Vec::new(),
        root.to_path_buf(),
    )
}

/// `MemTotal` of a meminfo file (`Node 0 MemTotal: 123 kB` or `MemTotal: 123 kB`) in bytes.
fn mem_total(path: &Path) -> Result<Option<u64>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    Ok(text.lines().find_map(|line| {
        let (_, rest) = line.split_once("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    }))
}

fn numa_nodes(root: &Path, online: &[usize]) -> Result<Vec<NumaNode>> {
    let dir = root.join(NODE_DIR);
    let ids = match read_optional(&dir.join("online"))? {
        Some(list) => parse_cpu_list(&list)?,
        None => numbered_entries(&dir, "node"),
    };
    if ids.is_empty() {
        // Kernel without CONFIG_NUMA: one node with everything.
        return Ok(vec![NumaNode {
            os_index: 0,
            cpus: online.to_vec(),
            memory_bytes: mem_total(&root.join("proc/meminfo"))?,
        }]);
    }
    let mut nodes = Vec::with_capacity(ids.len());
    for id in ids {
        let node_dir = dir.join(format!("node{id}"));
        let mut cpus = match read_optional(&node_dir.join("cpulist"))? {
            Some(list) => parse_cpu_list(&list)?,
            None => Vec::new(),
        };
        cpus.retain(|c| online.binary_search(c).is_ok());
        nodes.push(NumaNode {
            os_index: id,
            cpus,
            memory_bytes: mem_total(&node_dir.join("meminfo"))?,
        });
    }
    Ok(nodes)
}

/// Parses a sysfs cache size: `48K`, `2048K`, `32M`, or plain bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn caches(cpu_dir: &Path, online: &[usize]) -> Result<Vec<CacheInfo>> {
    let mut seen = BTreeSet::new();
    let mut caches = Vec::new();
    for &cpu in online {
        let cache_dir = cpu_dir.join(format!("cpu{cpu}/cache"));
        for index in numbered_entries(&cache_dir, "index") {
            let dir = cache_dir.join(format!("index{index}"));
            let Some(level) = read_int(&dir.join("level"))?.and_then(|l| u8::try_from(l).ok())
            else {
                continue;
            };
            let kind = match read_optional(&dir.join("type"))?.as_deref().map(str::trim) {
                Some("Data") => CacheKind::Data,
                Some("Instruction") => CacheKind::Instruction,
                Some("Unified") => CacheKind::Unified,
                other => {
                    tracing::debug!(dir = %dir.display(), ?other, "skipping cache of unknown type");
                    continue;
                }
            };
            let Some(size_bytes) = read_optional(&dir.join("size"))?.and_then(|s| parse_size(&s))
            else {
                continue;
            };
            let line_size = read_int(&dir.join("coherency_line_size"))?
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v > 0);
            let mut cpus = match read_optional(&dir.join("shared_cpu_list"))? {
                Some(list) => parse_cpu_list(&list)?,
                None => vec![cpu],
            };
            cpus.retain(|c| online.binary_search(c).is_ok());
            if seen.insert((level, kind, cpus.clone())) {
                caches.push(CacheInfo {
                    level,
                    kind,
                    size_bytes,
                    line_size,
                    cpus,
                });
            }
        }
    }
    caches.sort_by(|a, b| (a.level, a.kind, &a.cpus).cmp(&(b.level, b.kind, &b.cpus)));
    Ok(caches)
}

/// Network and RDMA devices present under `root/sys/class/{net,infiniband}`, sorted by class then name.
pub fn list_devices_in(root: &Path) -> Vec<(String, DeviceClass)> {
    let mut out = Vec::new();
    for (dir, class) in DEVICE_CLASSES {
        let mut names: Vec<String> = fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| (n, class)));
    }
    out
}

/// Whether `s` looks like a PCI address: `dddd:bb:dd.f` in hex (domain 4+ digits).
fn is_pci_address(s: &str) -> bool {
    let hex = |t: &str, len: usize| t.len() == len && t.bytes().all(|b| b.is_ascii_hexdigit());
    let mut parts = s.split(':');
    let (Some(domain), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    domain.len() >= 4 && hex(domain, domain.len()) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)
}

/// The resolved `device` directory and its parents up to and including the
/// first PCI function (a virtio NIC's `device` is `virtioN` under one).
fn device_chain(device: &Path, root: &Path) -> Vec<PathBuf> {
    let Ok(resolved) = fs::canonicalize(device) else {
        return vec![device.to_path_buf()];
    };
    let stop = fs::canonicalize(root.join("sys/devices")).unwrap_or_else(|_| root.to_path_buf());
    let mut chain = Vec::new();
    let mut cur = Some(resolved.as_path());
    while let Some(dir) = cur.filter(|d| d.starts_with(&stop) && *d != stop && chain.len() < 8) {
        chain.push(dir.to_path_buf());
        if dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_pci_address)
        {
            break;
        }
        cur = dir.parent();
    }
    if chain.is_empty() {
        chain.push(resolved);
    }
    chain
}

/// Locality of network interface or RDMA device `name` read from the sysfs tree under `root`.
///
/// A device without a `device` directory (`lo`, bridges, other virtual
/// devices) gets no NUMA node and every online CPU. `numa_node` and
/// `local_cpulist` are read from the device or, failing that, from its nearest
/// PCI parent; `-1` means no NUMA node. Offline CPUs are dropped.
pub fn device_locality_in(root: &Path, name: &str) -> Result<DeviceLocality> {
    let valid_name = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    let found = DEVICE_CLASSES
        .iter()
        .map(|&(dir, class)| (root.join(dir).join(name), class))
        .find(|(path, _)| valid_name && path.exists());
    let Some((path, class)) = found else {
        return Err(RuntimeError::NoSuchDevice {
            name: name.to_owned(),
            searched: DEVICE_CLASSES
                .iter()
                .map(|(dir, _)| root.join(dir).display().to_string())
                .collect(),
            found: list_devices_in(root).into_iter().map(|(n, _)| n).collect(),
        });
    };
    let online = online_cpus(root)?;
    let device = path.join("device");
    let mut loc = DeviceLocality {
        name: name.to_owned(),
        class,
        numa_node: None,
        local_cpus: online.clone(),
        pci_address: None,
    };
    if !device.exists() {
        return Ok(loc);
    }
    let chain = device_chain(&device, root);
    loc.pci_address = chain
        .iter()
        .filter_map(|d| d.file_name()?.to_str())
        .find(|n| is_pci_address(n))
        .map(str::to_owned);
    if let Some(numa) = first_present(&chain, "numa_node")? {
        let node = numa
            .trim()
            .parse::<i64>()
            .map_err(|_| RuntimeError::Topology(format!("{name}: malformed numa_node {numa:?}")))?;
        loc.numa_node = usize::try_from(node).ok();
    }
    if let Some(list) = first_present(&chain, "local_cpulist")? {
        let mut cpus = parse_cpu_list(&list)?;
        cpus.retain(|c| online.binary_search(c).is_ok());
        if cpus.is_empty() {
            tracing::debug!(
                name,
                list = list.trim(),
                "no online CPU in local_cpulist; using all"
            );
        } else {
            loc.local_cpus = cpus;
        }
    }
    Ok(loc)
}

/// Contents of `file` in the first directory of `chain` that has it.
fn first_present(chain: &[PathBuf], file: &str) -> Result<Option<String>> {
    for dir in chain {
        if let Some(s) = read_optional(&dir.join(file))? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake filesystem root under the temp dir, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(tag: &str) -> FakeRoot {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir()
                .join(format!("topo-test-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).expect("create fake root");
            FakeRoot(dir)
        }
        fn write(&self, rel: &str, contents: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        }
        fn symlink(&self, rel: &str, target: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(target, path).expect("symlink");
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// 2 packages x 2 cores x 2 threads, CPU 7 offline, 2 NUMA nodes.
    fn fake_machine(tag: &str) -> FakeRoot {
        let r = FakeRoot::new(tag);
        r.write("sys/devices/system/cpu/online", "0-6\n");
        for cpu in 0..8 {
            let (pkg, core) = (cpu / 4, (cpu % 4) / 2);
            let base = format!("sys/devices/system/cpu/cpu{cpu}");
            r.write(&format!("{base}/topology/core_id"), &format!("{core}\n"));
            r.write(
                &format!("{base}/topology/physical_package_id"),
                &format!("{pkg}\n"),
            );
            let sib = format!("{}-{}", cpu & !1, cpu | 1);
            let pkg_cpus = format!("{}-{}", pkg * 4, pkg * 4 + 3);
            for (i, (lvl, ty, size, shared)) in [
                ("1", "Data", "32K", &sib),
                ("1", "Instruction", "32K", &sib),
                ("2", "Unified", "1024K", &sib),
                ("3", "Unified", "16M", &pkg_cpus),
            ]
            .into_iter()
            .enumerate()
            {
                let idx = format!("{base}/cache/index{i}");
                r.write(&format!("{idx}/level"), lvl);
                r.write(&format!("{idx}/type"), ty);
                r.write(&format!("{idx}/size"), size);
                r.write(&format!("{idx}/coherency_line_size"), "64\n");
                r.write(&format!("{idx}/shared_cpu_list"), shared);
            }
        }
        r.write("sys/devices/system/node/online", "0-1\n");
        r.write("sys/devices/system/node/node0/cpulist", "0-3\n");
        r.write("sys/devices/system/node/node1/cpulist", "4-7\n");
        r.write(
            "sys/devices/system/node/node0/meminfo",
            "Node 0 MemTotal:       1024 kB\nNode 0 MemFree: 5 kB\n",
        );
        // A virtio NIC on node 1, an RDMA device directly on PCI, a virtual loopback.
        let pci = "sys/devices/pci0000:00/0000:00:03.0";
        r.write(&format!("{pci}/numa_node"), "1\n");
        r.write(&format!("{pci}/local_cpulist"), "4-7\n");
        r.write(&format!("{pci}/virtio2/net/eth0/mtu"), "1500\n");
        r.symlink(
            "sys/class/net/eth0",
            "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
        );
        r.symlink("sys/class/net/eth0/device", "../../../virtio2");
        let ib = "sys/devices/pci0000:80/0000:81:00.0";
        r.write(&format!("{ib}/numa_node"), "-1\n");
        r.write(&format!("{ib}/infiniband/mlx5_0/x"), "");
        r.symlink(
            "sys/class/infiniband/mlx5_0",
            "../../devices/pci0000:80/0000:81:00.0/infiniband/mlx5_0",
        );
        r.symlink(
            "sys/class/infiniband/mlx5_0/device",
            "../../../0000:81:00.0",
        );
        r.write("sys/devices/virtual/net/lo/mtu", "65536\n");
        r.symlink("sys/class/net/lo", "../../devices/virtual/net/lo");
        r
    }

    #[test]
    fn reads_fake_machine() -> Result<()> {
        let root = fake_machine("machine");
        let topo = Topology::from_sysfs_root(&root.0)?;
        assert_eq!(topo.source(), TopologySource::Sysfs);
        let ids: Vec<usize> = topo.cpus().iter().map(|c| c.os_index).collect();
        assert_eq!(ids, (0..7).collect::<Vec<_>>());
        assert_eq!(topo.physical_cores(), 4);
        assert_eq!(
            topo.cpus()[5],
            CpuInfo {
                os_index: 5,
                core_id: 0,
                package: 1,
                numa_node: Some(1)
            }
        );
        assert_eq!(topo.numa_node_of_cpu(2), Some(0));
        assert_eq!(topo.numa_node_of_cpu(7), None, "offline CPU");
        assert_eq!(topo.numa_nodes().len(), 2);
        assert_eq!(topo.numa_nodes()[0].memory_bytes, Some(1024 * 1024));
        assert_eq!(topo.numa_nodes()[1].memory_bytes, None);
        assert_eq!(
            topo.numa_nodes()[1].cpus,
            vec![4, 5, 6],
            "offline CPU 7 dropped"
        );
        // L1d/L1i/L2 per core (4 cores), L3 per package (2).
        let count = |level, kind| {
            topo.caches()
                .iter()
                .filter(|c| c.level == level && c.kind == kind)
                .count()
        };
        assert_eq!(count(1, CacheKind::Data), 4);
        assert_eq!(count(1, CacheKind::Instruction), 4);
        assert_eq!(count(2, CacheKind::Unified), 4);
        assert_eq!(count(3, CacheKind::Unified), 2);
        let l3 = topo
            .caches()
            .iter()
            .find(|c| c.level == 3 && c.cpus.contains(&4));
        assert_eq!(
            l3,
            Some(&CacheInfo {
                level: 3,
                kind: CacheKind::Unified,
                size_bytes: 16 << 20,
                line_size: Some(64),
                cpus: vec![4, 5, 6],
            })
        );
        Ok(())
    }

    #[test]
    fn fake_machine_without_numa_or_online_file() -> Result<()> {
        let r = FakeRoot::new("nonuma");
        r.write("sys/devices/system/cpu/cpu0/topology/core_id", "0");
        r.write("sys/devices/system/cpu/cpu1/online", "1\n");
        r.write("sys/devices/system/cpu/cpu2/online", "0\n");
        r.write("proc/meminfo", "MemTotal:        2048 kB\nMemFree: 1 kB\n");
        let topo = Topology::from_sysfs_root(&r.0)?;
        let ids: Vec<usize> = topo.cpus().iter().map(|c| c.os_index).collect();
        assert_eq!(ids, [0, 1]);
        assert_eq!(
            topo.numa_nodes(),
            [NumaNode {
                os_index: 0,
                cpus: vec![0, 1],
                memory_bytes: Some(2 << 20)
            }]
        );
        assert_eq!(
            topo.physical_cores(),
            2,
            "missing core_id counts as its own core"
        );
        assert!(topo.caches().is_empty());
        assert!(matches!(
            Topology::from_sysfs_root(&r.0.join("missing")),
            Err(RuntimeError::Topology(_))
        ));
        Ok(())
    }

    #[test]
    fn device_locality_in_fake_tree() -> Result<()> {
        let root = fake_machine("devices");
        let eth0 = device_locality_in(&root.0, "eth0")?;
        assert_eq!(
            eth0,
            DeviceLocality {
                name: "eth0".into(),
                class: DeviceClass::Net,
                numa_node: Some(1),
                local_cpus: vec![4, 5, 6],
                pci_address: Some("0000:00:03.0".into()),
            }
        );
        let ib = device_locality_in(&root.0, "mlx5_0")?;
        assert_eq!(ib.class, DeviceClass::Infiniband);
        assert_eq!(ib.numa_node, None, "numa_node -1");
        assert_eq!(ib.local_cpus, (0..7).collect::<Vec<_>>());
        assert_eq!(ib.pci_address.as_deref(), Some("0000:81:00.0"));
        let lo = device_locality_in(&root.0, "lo")?;
        assert_eq!((lo.numa_node, lo.pci_address), (None, None));
        assert_eq!(lo.local_cpus, (0..7).collect::<Vec<_>>());

        let topo = Topology::from_sysfs_root(&root.0)?;
        assert_eq!(topo.device_locality("eth0")?, eth0);

        assert_eq!(
            list_devices_in(&root.0),
            [
                ("eth0".to_owned(), DeviceClass::Net),
                ("lo".to_owned(), DeviceClass::Net),
                ("mlx5_0".to_owned(), DeviceClass::Infiniband),
            ]
        );
        for bad in ["nope0", "", "..", "eth0/device"] {
            match topo.device_locality(bad) {
                Err(RuntimeError::NoSuchDevice {
                    name,
                    searched,
                    found,
                }) => {
                    assert_eq!(name, bad);
                    assert_eq!(searched.len(), 2);
                    assert!(searched[1].ends_with("sys/class/infiniband"));
                    assert_eq!(found, ["eth0", "lo", "mlx5_0"]);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn pci_addresses_and_sizes() {
        assert!(is_pci_address("0000:00:03.0"));
        assert!(is_pci_address("10000:e1:1f.7"));
        assert!(!is_pci_address("virtio2"));
        assert!(!is_pci_address("0000:00:03"));
        assert!(!is_pci_address("pci0000:00"));
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("32M\n"), Some(32 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("K"), None);
    }
}
