//! Ceph-style messenger on msgr2.1: see issue "Messenger". Not implemented yet.
