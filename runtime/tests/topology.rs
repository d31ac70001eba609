//! Topology and affinity against the real machine. Every expectation is
//! derived from what the machine reports, so these hold on any Linux host.

use std::collections::BTreeSet;

use corewire_runtime::affinity::*;
use corewire_runtime::error::RuntimeError;
use corewire_runtime::topology::*;

fn online_cpus() -> Vec<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("read online");
    parse_cpu_list(&list).expect("parse online")
}

fn cpu_ids(topo: &Topology) -> Vec<usize> {
    topo.cpus().iter().map(|c| c.os_index).collect()
}

#[test]
fn detect_matches_online_cpus() {
    let topo = Topology::detect().expect("detect");
    assert_eq!(cpu_ids(&topo), online_cpus());
    assert!(!topo.numa_nodes().is_empty());
    assert!(topo.physical_cores() >= 1 && topo.physical_cores() <= topo.cpus().len());
    let node_cpus: BTreeSet<usize> = topo
        .numa_nodes()
        .iter()
        .flat_map(|n| n.cpus.iter().copied())
        .collect();
    assert_eq!(node_cpus.into_iter().collect::<Vec<_>>(), online_cpus());
    for cpu in topo.cpus() {
        assert_eq!(topo.numa_node_of_cpu(cpu.os_index), cpu.numa_node);
        assert!(
            cpu.numa_node.is_some(),
            "cpu {} has no NUMA node",
            cpu.os_index
        );
    }
    #[cfg(feature = "hwloc")]
    assert_eq!(topo.source(), TopologySource::Hwloc);
}

#[cfg(feature = "hwloc")]
#[test]
fn hwloc_and_sysfs_agree() {
    let hw = Topology::from_hwloc().expect("hwloc");
    let fs = Topology::from_sysfs().expect("sysfs");
    assert_eq!(hw.source(), TopologySource::Hwloc);
    assert_eq!(fs.source(), TopologySource::Sysfs);
    assert_eq!(hw.cpus(), fs.cpus());
    let nodes = |t: &Topology| -> Vec<(usize, Vec<usize>)> {
        t.numa_nodes()
            .iter()
            .map(|n| (n.os_index, n.cpus.clone()))
            .collect()
    };
    assert_eq!(nodes(&hw), nodes(&fs));
    assert_eq!(hw.physical_cores(), fs.physical_cores());
    // hwloc's Linux backend reads the same sysfs cache files.
    let shape = |t: &Topology| -> BTreeSet<(u8, CacheKind, Vec<usize>)> {
        t.caches()
            .iter()
            .map(|c| (c.level, c.kind, c.cpus.clone()))
            .collect()
    };
    assert_eq!(shape(&hw), shape(&fs));
    // Device locality through hwloc's I/O objects matches sysfs's.
    for (name, _) in list_devices_in(std::path::Path::new("/")) {
        let (a, b) = (hw.device_locality(&name), fs.device_locality(&name));
        let (a, b) = (a.expect(&name), b.expect(&name));
        assert_eq!(
            (a.class, a.numa_node, &a.local_cpus),
            (b.class, b.numa_node, &b.local_cpus)
        );
    }
}

#[test]
fn loopback_locality() {
    let topo = Topology::detect().expect("detect");
    let lo = topo.device_locality("lo").expect("lo");
    assert_eq!(lo.name, "lo");
    assert_eq!(lo.class, DeviceClass::Net);
    assert_eq!(lo.pci_address, None);
    assert_eq!(lo.local_cpus, cpu_ids(&topo));
    let raw = device_locality_in(std::path::Path::new("/"), "lo").expect("lo via sysfs");
    assert_eq!(raw.numa_node, None);
    assert_eq!(raw.local_cpus, online_cpus());
    assert!(
        list_devices_in(std::path::Path::new("/")).contains(&("lo".to_owned(), DeviceClass::Net))
    );
}

#[test]
fn every_listed_device_has_a_locality() {
    let topo = Topology::detect().expect("detect");
    let online = online_cpus();
    for (name, class) in list_devices_in(std::path::Path::new("/")) {
        let dev = topo.device_locality(&name).expect(&name);
        assert_eq!(dev.class, class, "{name}");
        assert!(!dev.local_cpus.is_empty(), "{name}");
        assert!(
            dev.local_cpus.iter().all(|c| online.contains(c)),
            "{name}: {dev:?}"
        );
        if let Some(node) = dev.numa_node {
            assert!(
                topo.numa_nodes().iter().any(|n| n.os_index == node),
                "{name}: {dev:?}"
            );
        }
    }
}

#[test]
fn unknown_device_names_what_exists() {
    let topo = Topology::detect().expect("detect");
    let err = topo
        .device_locality("nonexistent0")
        .expect_err("nonexistent0");
    let message = err.to_string();
    match err {
        RuntimeError::NoSuchDevice {
            name,
            searched,
            found,
        } => {
            assert_eq!(name, "nonexistent0");
            assert_eq!(searched, ["/sys/class/net", "/sys/class/infiniband"]);
            assert!(found.iter().any(|d| d == "lo"), "{found:?}");
            for dev in &found {
                assert!(
                    message.contains(dev.as_str()),
                    "{message} should name {dev}"
                );
            }
        }
        other => panic!("expected NoSuchDevice, got {other:?}"),
    }
}

#[test]
fn pin_inside_and_outside_the_mask() {
    std::thread::spawn(|| {
        let allowed = allowed_cpus().expect("allowed");
        let target = *allowed.last().expect("at least one allowed cpu");
        pin_current_thread(target).expect("pin inside mask");
        assert_eq!(allowed_cpus().expect("allowed after pin"), [target]);
        assert_eq!(current_cpu(), Some(target));

        let outside = (0..)
            .find(|c| !allowed.contains(c))
            .expect("some cpu outside");
        match pin_current_thread(outside) {
            Err(RuntimeError::CpuNotAllowed { cpu, allowed }) => {
                assert_eq!(cpu, outside);
                assert_eq!(allowed, [target], "mask is the pinned one now");
            }
            other => panic!("expected CpuNotAllowed, got {other:?}"),
        }
    })
    .join()
    .expect("pin thread");
}

#[test]
fn narrowed_mask_is_respected() {
    std::thread::spawn(|| {
        let first = allowed_cpus().expect("allowed")[0];
        // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write into it,
        // and sched_setaffinity(0, ..) changes only this thread's mask.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(first, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        let allowed = allowed_cpus().expect("allowed after narrowing");
        assert_eq!(allowed, [first]);
        match select_cpus(&CoreSelection::Count(2), &allowed, None) {
            Err(RuntimeError::NotEnoughCores {
                requested,
                available,
                allowed,
            }) => {
                assert_eq!((requested, available), (2, 1));
                assert_eq!(allowed, [first]);
            }
            other => panic!("expected NotEnoughCores, got {other:?}"),
        }
        assert_eq!(
            select_cpus(&CoreSelection::Count(1), &allowed, None).expect("one"),
            [first]
        );
    })
    .join()
    .expect("narrowing thread");
}

#[test]
fn count_selection_prefers_distinct_cores() {
    let topo = Topology::detect().expect("detect");
    let allowed = allowed_cpus().expect("allowed");
    let allowed_cores: BTreeSet<(usize, usize)> = allowed
        .iter()
        .filter_map(|&c| topo.cpus().iter().find(|i| i.os_index == c))
        .map(|i| (i.package, i.core_id))
        .collect();
    let n = allowed_cores.len();
    let chosen = select_cpus(&CoreSelection::Count(n), &allowed, Some(&topo)).expect("select");
    assert_eq!(chosen.len(), n);
    let chosen_cores: BTreeSet<(usize, usize)> = chosen
        .iter()
        .filter_map(|&c| topo.cpus().iter().find(|i| i.os_index == c))
        .map(|i| (i.package, i.core_id))
        .collect();
    assert_eq!(
        chosen_cores.len(),
        n,
        "{chosen:?} should sit on {n} distinct cores"
    );
}
