//! Generated protobuf types: the external contract (`keyseal.v1`) and the
//! on-disk encodings (`keyseal.store.v1`). The modules mirror the protobuf
//! packages so prost's cross-package paths resolve. [`names`] holds the
//! names the API, routing keys and metrics give them.

/// Protobuf package root.
#[allow(missing_docs, clippy::all)]
pub mod keyseal {
    /// `keyseal.v1`: `IngestRecord` and the domain `Event`s.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/keyseal.v1.rs"));
    }
    /// Internal encodings.
    pub mod store {
        /// `keyseal.store.v1`: values as they rest in RocksDB.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/keyseal.store.v1.rs"));
        }
    }
}

pub mod names;

pub use keyseal::store::v1 as store;
pub use keyseal::v1;
