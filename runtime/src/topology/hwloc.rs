//! Topology discovery through hwloc (`hwlocality`, Debian's libhwloc 2.x).
//!
//! The topology is built with:
//!
//! * `INCLUDE_DISALLOWED`, so that it lists every online CPU like sysfs does,
//!   whatever cgroup cpuset the process runs in;
//! * `DONT_CHANGE_BINDING`, so that discovery never re-binds the calling
//!   thread (this disables hwloc's x86 `cpuid` backend; the Linux backend
//!   reads the same information from sysfs);
//! * instruction caches kept (hwloc drops them by default) and I/O objects
//!   of the "important" kinds kept, which includes network and OpenFabrics
//!   OS devices with their PCI parents.
//!
//! Everything is copied out into plain data: the hwloc topology itself is
//! dropped before returning.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::{CacheType, OSDeviceType, ObjectType};
use hwlocality::object::TopologyObject;
use hwlocality::topology::builder::{BuildFlags, TypeFilter};

use super::{
    CacheInfo, CacheKind, CpuInfo, DeviceClass, DeviceLocality, NumaNode, Topology, TopologySource,
};
use crate::error::{Result, RuntimeError};

/// Maps an hwlocality error to [`RuntimeError::Topology`], saying what was being done.
fn hwloc_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> RuntimeError {
    move |e| RuntimeError::Topology(format!("hwloc: {what}: {e}"))
}

/// Builds the hwloc topology of this machine and copies it out.
pub(super) fn load() -> Result<Topology> {
    let topo = hwlocality::Topology::builder()
        .with_flags(BuildFlags::INCLUDE_DISALLOWED | BuildFlags::DONT_CHANGE_BINDING)
        .map_err(hwloc_err("setting build flags"))?
        .with_cpu_icache_type_filter(TypeFilter::KeepAll)
        .map_err(hwloc_err("keeping instruction caches"))?
        .with_io_type_filter(TypeFilter::KeepImportant)
        .map_err(hwloc_err("enabling I/O discovery"))?
        .build()
        .map_err(hwloc_err("building topology"))?;

    let numa_nodes: Vec<NumaNode> = topo
        .objects_with_type(ObjectType::NUMANode)
        .filter_map(|node| {
            let memory_bytes = match node.attributes() {
                Some(ObjectAttributes::NUMANode(attr)) => attr.local_memory().map(NonZeroU64::get),
                _ => None,
            };
            Some(NumaNode {
                os_index: node.os_index()?,
                cpus: cpuset_of(node),
                memory_bytes,
            })
        })
        .collect();

    let index_of = |obj: &TopologyObject| obj.os_index().unwrap_or_else(|| obj.logical_index());
    let mut cpus = Vec::new();
    for pu in topo.objects_with_type(ObjectType::PU) {
        let Some(os_index) = pu.os_index() else {
            tracing::warn!(
                pu = pu.logical_index(),
                "hwloc PU without an OS index; skipped"
            );
            continue;
        };
        cpus.push(CpuInfo {
            os_index,
            // No Core object (some platforms): the PU is its own core.
            core_id: pu
                .first_ancestor_with_type(ObjectType::Core)
                .map_or(os_index, index_of),
            package: pu
                .first_ancestor_with_type(ObjectType::Package)
                .map_or(0, index_of),
            numa_node: None, // filled in by Topology::assemble from the node CPU lists
        });
    }

    let mut caches: Vec<CacheInfo> = topo
        .objects()
        .filter(|obj| obj.object_type().is_cpu_cache())
        .filter_map(cache_info)
        .collect();
    caches.sort_by(|a, b| (a.level, a.kind, &a.cpus).cmp(&(b.level, b.kind, &b.cpus)));
    caches.dedup_by(|a, b| (a.level, a.kind, &a.cpus) == (b.level, b.kind, &b.cpus));

    let devices: Vec<DeviceLocality> = topo.os_devices().filter_map(device_info).collect();

    Topology::assemble(
        TopologySource::Hwloc,
        cpus,
        numa_nodes,
        caches,
        devices,
        PathBuf::from("/"),
    )
}

/// CPUs of an object's cpuset, ascending (empty when it has none).
fn cpuset_of(obj: &TopologyObject) -> Vec<usize> {
    obj.cpuset()
        .map(|set| set.iter_set().map(usize::from).collect())
        .unwrap_or_default()
}

fn cache_info(obj: &TopologyObject) -> Option<CacheInfo> {
    let Some(ObjectAttributes::Cache(attr)) = obj.attributes() else {
        return None;
    };
    let kind = match attr.cache_type() {
        CacheType::Data => CacheKind::Data,
        CacheType::Instruction => CacheKind::Instruction,
        CacheType::Unified => CacheKind::Unified,
        CacheType::Unknown(_) => return None,
    };
    let Some(size) = attr.size() else {
        tracing::debug!(cache = ?obj.object_type(), "hwloc cache of unknown size; skipped");
        return None;
    };
    Some(CacheInfo {
        level: u8::try_from(attr.depth()).ok()?,
        kind,
        size_bytes: size.get(),
        line_size: attr
            .line_size()
            .map(NonZeroUsize::get)
            .and_then(|l| u32::try_from(l).ok()),
        cpus: cpuset_of(obj),
    })
}

/// Locality of a network or OpenFabrics OS device; `None` for other devices.
fn device_info(obj: &TopologyObject) -> Option<DeviceLocality> {
    let class = match obj.attributes() {
        Some(ObjectAttributes::OSDevice(attr)) => match attr.device_type() {
            OSDeviceType::Network => DeviceClass::Net,
            OSDeviceType::OpenFabrics => DeviceClass::Infiniband,
            _ => return None,
        },
        _ => return None,
    };
    let name = obj.name()?.to_str().ok()?.to_owned();
    let local = obj.first_non_io_ancestor()?;
    // One NUMA node in the locality's nodeset: the device is attached to it.
    let numa_node = local.nodeset().and_then(|set| match set.weight() {
        Some(1) => set.first_set().map(usize::from),
        _ => None,
    });
    let pci_address = obj.ancestors().find_map(|a| match a.attributes() {
        Some(ObjectAttributes::PCIDevice(pci)) => Some(format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            pci.domain(),
            pci.bus_id(),
            pci.bus_device(),
            pci.function()
        )),
        _ => None,
    });
    Some(DeviceLocality {
        name,
        class,
        numa_node,
        local_cpus: cpuset_of(local),
        pci_address,
    })
}
