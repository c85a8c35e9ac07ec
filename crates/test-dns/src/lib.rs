//! An in-process DNS server on loopback that serves test zones.
