//! Code generated from `proto/` at build time (see `build.rs`).
//!
//! Nothing here is written by hand; the `.proto` files are the source of
//! truth and carry the documentation.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of the gateway's own protos: its
/// services (directory, exchange log, data tracker) and the options other
/// protos use (`govbridge.options.v1.data_subject`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/govbridge_descriptor.bin"));

/// The mock agencies' protos (and the benchmark's echo service), one
/// encoded `FileDescriptorSet` each, by directory under
/// `proto/govbridge/`: what `protoc --include_imports --include_source_info
/// --descriptor_set_out` writes. The gateway knows none of these services
/// until a configuration registers them with `[services."X"] descriptor`,
/// as the development configuration does (`descriptors/NAME.binpb`).
pub const AGENCY_DESCRIPTOR_SETS: [(&str, &[u8]); 8] = [
    (
        "azbusiness",
        include_bytes!(concat!(env!("OUT_DIR"), "/azbusiness.binpb")),
    ),
    (
        "aztax",
        include_bytes!(concat!(env!("OUT_DIR"), "/aztax.binpb")),
    ),
    (
        "bank",
        include_bytes!(concat!(env!("OUT_DIR"), "/bank.binpb")),
    ),
    (
        "bench",
        include_bytes!(concat!(env!("OUT_DIR"), "/bench.binpb")),
    ),
    (
        "business",
        include_bytes!(concat!(env!("OUT_DIR"), "/business.binpb")),
    ),
    (
        "civilregistry",
        include_bytes!(concat!(env!("OUT_DIR"), "/civilregistry.binpb")),
    ),
    (
        "consent",
        include_bytes!(concat!(env!("OUT_DIR"), "/consent.binpb")),
    ),
    (
        "tax",
        include_bytes!(concat!(env!("OUT_DIR"), "/tax.binpb")),
    ),
];

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

/// Azerbaijan's company registry, served by the partner instance of
/// `govbridge dev --federation`.
pub mod azbusiness {
    pub mod v1 {
        tonic::include_proto!("govbridge.azbusiness.v1");
    }
}

/// Azerbaijan's tax service, served by the partner instance of `govbridge
/// dev --federation`.
pub mod aztax {
    pub mod v1 {
        tonic::include_proto!("govbridge.aztax.v1");
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

pub mod witness {
    pub mod v1 {
        tonic::include_proto!("govbridge.witness.v1");
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
