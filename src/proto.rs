//! Generated code for the `hookpost.v1` contract in `proto/`, and
//! [`RawStruct`], the hand-written type its `google.protobuf.Struct` fields
//! use.

mod raw_struct;
pub use raw_struct::{MAX_DEPTH, RawStruct, too_deep};

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("hookpost.v1");
    include!(concat!(env!("OUT_DIR"), "/hookpost.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of the contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hookpost_descriptor");
