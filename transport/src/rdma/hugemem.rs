//! The memory behind a core's registered pool: huge pages where possible, on the NIC's NUMA
//! node.
//!
//! [`PoolMem::map`] maps an anonymous area, trying in order:
//! 1. explicit 2 MiB huge pages (`MAP_HUGETLB`), from the pool the administrator reserved
//!    (`vm.nr_hugepages`); a private hugetlb mapping reserves its pages when it is mapped, so
//!    a short pool fails here, never later with `SIGBUS`;
//! 2. normal pages advised for transparent huge pages (`MADV_HUGEPAGE`: honoured when THP is
//!    `always` or `madvise`);
//! 3. normal pages.
//!
//! Before any page is touched, the area gets a *preferred* NUMA policy (`mbind`,
//! `MPOL_PREFERRED`) for the NIC's node, so registration (`ibv_reg_mr` faults and pins every
//! page) places the pages next to the device that DMAs them. Preferred rather than bound: a
//! full node spills to another instead of failing. A failed `mbind` (a kernel without NUMA
//! support) is logged and the area used as it is.
//!
//! The area is zeroed (fresh anonymous memory) and unmapped on drop.

use std::io;
use std::ptr::NonNull;

/// Size of an explicit huge page (`MAP_HUGETLB` with the default size on x86-64).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// `get_mempolicy`: look up the policy of the page at an address (linux/mempolicy.h).
#[cfg(test)]
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

/// Highest NUMA node number `mbind` is given a mask for (the kernel's default `NODES_SHIFT`
/// maximum is 1024 nodes).
const MAX_NODES: usize = 1024;

/// How a pool area's pages were obtained, ordered from the weakest to the best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PoolBacking {
    /// Normal pages.
    Normal,
    /// Normal pages advised for transparent huge pages (`MADV_HUGEPAGE` accepted).
    TransparentHuge,
    /// Explicit huge pages (`MAP_HUGETLB`) from the reserved pool.
    HugeTlb,
}

/// A page-aligned anonymous mapping, unmapped on drop.
pub(crate) struct PoolMem {
    ptr: NonNull<u8>,
    len: usize,
    backing: PoolBacking,
    /// The NUMA node the area prefers, if the policy was set.
    node: Option<usize>,
}

// SAFETY: plain memory with no thread affinity; who may access which part is decided by the
// pool (one owner per chunk at a time), not by the thread.
unsafe impl Send for PoolMem {}
// SAFETY: as above; `PoolMem` itself never reads or writes the bytes.
unsafe impl Sync for PoolMem {}

impl PoolMem {
    /// Maps `len` bytes (rounded up to a whole number of huge pages), preferring NUMA node
    /// `node` when given. Fails only if not even normal pages can be mapped.
    pub fn map(len: usize, node: Option<usize>) -> io::Result<PoolMem> {
        let len = len
            .checked_next_multiple_of(HUGE_PAGE)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pool area size"))?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping (no address hint, no file): it aliases nothing.
        let huge = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        let (addr, mut backing) = if huge != libc::MAP_FAILED {
            (huge, PoolBacking::HugeTlb)
        } else {
            // SAFETY: as above.
            let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            (addr, PoolBacking::Normal)
        };
        let ptr = NonNull::new(addr.cast::<u8>()).expect("mmap never returns null on success");
        let mut mem = PoolMem {
            ptr,
            len,
            backing,
            node: None,
        };
        if backing == PoolBacking::Normal {
            // SAFETY: advice on our own mapping, which is `len` bytes long.
            if unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) } == 0 {
                backing = PoolBacking::TransparentHuge;
                mem.backing = backing;
            }
        }
        if let Some(n) = node {
            match mem.prefer_node(n) {
                Ok(()) => mem.node = Some(n),
                Err(e) => tracing::warn!(
                    node = n, error = %e,
                    "rdma pool: cannot set a NUMA policy; pages go where the kernel puts them"
                ),
            }
        }
        Ok(mem)
    }

    /// `mbind(MPOL_PREFERRED)` of the whole area to node `n`.
    fn prefer_node(&self, n: usize) -> io::Result<()> {
        if n >= MAX_NODES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NUMA node {n} is beyond the {MAX_NODES} nodes supported"),
            ));
        }
        let mut mask = [0u64; MAX_NODES / 64];
        mask[n / 64] |= 1 << (n % 64);
        // The kernel reads `maxnode - 1` bits (numactl's convention, kept for compatibility).
        let maxnode = MAX_NODES as libc::c_ulong + 1;
        // SAFETY: `mbind` only changes the policy of our own mapping (`ptr`, `len`); `mask`
        // is `MAX_NODES` bits long, as `maxnode` says, and outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.ptr.as_ptr(),
                self.len,
                libc::MPOL_PREFERRED,
                mask.as_ptr(),
                maxnode,
                0 as libc::c_uint,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn backing(&self) -> PoolBacking {
        self.backing
    }
    /// The NUMA node the area prefers (None: no policy set).
    pub fn node(&self) -> Option<usize> {
        self.node
    }
    /// Whether `[p, p + len)` lies inside the area.
    pub fn contains(&self, p: *const u8, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let p = p as usize;
        p >= start && p.checked_add(len).is_some_and(|e| e <= start + self.len)
    }
}

impl Drop for PoolMem {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes, unmapped once. Whoever registered it
        // deregistered first (the pool drops its memory regions before the last `Arc` of
        // the memory goes).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The NUMA node of RDMA device `name`, from the runtime's topology (hwloc, else sysfs),
/// detected once per process. None when unknown (a software device such as `rxe` on a
/// multi-node machine) or when the topology cannot be read.
pub(crate) fn nic_numa_node(name: &str) -> Option<usize> {
    use std::sync::OnceLock;
    static TOPO: OnceLock<Option<corewire_runtime::topology::Topology>> = OnceLock::new();
    let topo = TOPO.get_or_init(|| match corewire_runtime::topology::Topology::detect() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "rdma pool: no topology; pools get no NUMA policy");
            None
        }
    });
    topo.as_ref()?.device_locality(name).ok()?.numa_node
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy and node of the page at `p`, as the kernel reports them.
    fn policy_at(p: *const u8) -> (libc::c_int, u64) {
        let mut mode: libc::c_int = -1;
        let mut mask = [0u64; MAX_NODES / 64];
        // SAFETY: `get_mempolicy` writes `mode` and at most `MAX_NODES` bits of `mask`, both
        // ours; `p` is only used as an address to look up (MPOL_F_ADDR).
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                mask.as_mut_ptr(),
                MAX_NODES as libc::c_ulong + 1,
                p,
                MPOL_F_ADDR,
            )
        };
        assert_eq!(r, 0, "get_mempolicy: {}", io::Error::last_os_error());
        (mode, mask[0])
    }

    #[test]
    fn area_prefers_the_given_node_and_is_zeroed() {
        let mem = PoolMem::map(3 << 20, Some(0)).unwrap();
        assert_eq!(mem.len(), 4 << 20, "rounded up to whole huge pages");
        assert_eq!(mem.node(), Some(0));
        let p = mem.ptr().as_ptr();
        // SAFETY: inside the mapping, which nothing else uses.
        unsafe {
            assert_eq!(*p.add(12345), 0);
            *p.add(12345) = 7;
        }
        let (mode, mask) = policy_at(p);
        assert_eq!((mode, mask), (libc::MPOL_PREFERRED, 1));
        assert!(mem.contains(p, 4 << 20) && !mem.contains(p, (4 << 20) + 1));
        // Where the host reserves no huge pages (as this machine kind), THP advice is the
        // best there is; `HugeTlb` whenever `vm.nr_hugepages` covers the area. Only a kernel
        // built without THP refuses the advice.
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            assert_ne!(mem.backing(), PoolBacking::Normal);
        }
    }

    #[test]
    fn contains_is_exact() {
        const PAGE: usize = 4096;
        let m = PoolMem::map(HUGE_PAGE, None).unwrap();
        let p = m.ptr().as_ptr();
        assert!(m.contains(p, HUGE_PAGE));
        // SAFETY: offsets within the mapping (pointer arithmetic only).
        let (mid, end) = unsafe { (p.add(PAGE), p.add(HUGE_PAGE)) };
        assert!(m.contains(mid, HUGE_PAGE - PAGE));
        assert!(!m.contains(mid, HUGE_PAGE - PAGE + 1));
        assert!(!m.contains(end, 1));
        assert!(!m.contains(p.wrapping_sub(1), 1));
    }

    #[test]
    fn no_node_no_policy() {
        let mem = PoolMem::map(HUGE_PAGE, None).unwrap();
        assert_eq!(mem.node(), None);
        assert_eq!(policy_at(mem.ptr().as_ptr()).0, libc::MPOL_DEFAULT);
    }

    #[test]
    fn a_node_beyond_the_mask_is_refused_and_the_area_still_mapped() {
        let mem = PoolMem::map(HUGE_PAGE, Some(MAX_NODES)).unwrap();
        assert_eq!(mem.node(), None);
    }
}
