# The restate server image: `docker build -t restate:0.1.0 .` (the tag manifests/ use; keep it in step
# with Cargo.toml's version). No container engine runs where this repository is developed: the build is
# not exercised there, but tests/image.rs checks that the runtime stage's packages provide every shared
# library the binary links.

# Build stage: the pinned Rust (rust-toolchain.toml) on Debian 12, whose librocksdb-dev (RocksDB 7.8.3)
# rocksdb 0.21 links against instead of compiling RocksDB's C++.
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential librocksdb-dev libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN ROCKSDB_LIB_DIR="/usr/lib/$(gcc -print-multiarch)" cargo build --release --locked --bin restate

# Runtime stage: RocksDB's shared library (its package pulls in its own dependencies) and the binary.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends librocksdb7.8 \
 && rm -rf /var/lib/apt/lists/*
# Data lives in ./target of the working directory (/): /target, owned by the user the server runs as.
# Mount the persistent volume there.
RUN useradd --system --uid 10001 --user-group --home-dir /target --no-create-home restate \
 && mkdir /target \
 && chown restate:restate /target
COPY --from=build /src/target/release/restate /usr/local/bin/restate
USER 10001:10001
WORKDIR /
# ingress, meta, storage API
EXPOSE 9090 8081 9091
ENTRYPOINT ["restate"]
