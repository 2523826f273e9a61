//! Code generated from `proto/` at build time (see `build.rs`).
//!
//! Nothing here is written by hand; the `.proto` files are the source of
//! truth and carry the documentation.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of every govbridge proto.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/govbridge_descriptor.bin"));

pub mod civilregistry {
    pub mod v1 {
        tonic::include_proto!("govbridge.civilregistry.v1");
    }
}

pub mod tax {
    pub mod v1 {
        tonic::include_proto!("govbridge.tax.v1");
    }
}

pub mod business {
    pub mod v1 {
        tonic::include_proto!("govbridge.business.v1");
    }
}

pub mod bank {
    pub mod v1 {
        tonic::include_proto!("govbridge.bank.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("govbridge.audit.v1");
    }
}

pub mod consent {
    pub mod v1 {
        tonic::include_proto!("govbridge.consent.v1");

        impl ConsentState {
            /// The state as people read it: `active`, `paused`, ...
            pub fn name(self) -> &'static str {
                match self {
                    Self::Unspecified => "unspecified",
                    Self::Active => "active",
                    Self::Paused => "paused",
                    Self::Revoked => "revoked",
                }
            }
        }
    }
}

pub mod bench {
    pub mod v1 {
        tonic::include_proto!("govbridge.bench.v1");
    }
}

pub mod directory {
    pub mod v1 {
        tonic::include_proto!("govbridge.directory.v1");
    }
}

/// OTLP, the OpenTelemetry protocol (the subset in `proto/opentelemetry/`).
pub mod opentelemetry {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.common.v1");
        }
    }
    pub mod resource {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.resource.v1");
        }
    }
    pub mod trace {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.trace.v1");
        }
    }
    pub mod collector {
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
            }
        }
    }
}
