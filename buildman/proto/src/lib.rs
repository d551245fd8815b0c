//! Wire types of the `buildman_pb.BuildManager` gRPC protocol (not implemented yet: issue 3).
//!
//! This crate will hold only the `.proto` file and the code `tonic`/`prost` generate from it, so that
//! `builder-agent` can depend on the wire types without linking any server dependency. Domain
//! types live in `buildman`; conversions happen at that boundary.
//!
//! Today it contains nothing.
#![warn(missing_docs)]
