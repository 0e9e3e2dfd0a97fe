# syntax=docker/dockerfile:1
# The fallthrough image: the release binary on distroless, running as non-root.
#
#   docker build -t ghcr.io/fallthrough-dev/fallthrough:0.1.0 .
#
# The build stage and the runtime share glibc (Debian 12 "bookworm"), so the binary built
# here runs on gcr.io/distroless/cc-debian12, which has glibc, libgcc and CA certificates
# but no shell: the chart's preStop hook uses the native `sleep` action for that reason.

FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin fallthrough \
 && rm -rf src

# Then the crate itself. `touch` makes the sources newer than the placeholder's build
# artifacts whatever mtimes COPY gave them, so cargo rebuilds the real binary.
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin fallthrough

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/fallthrough /usr/local/bin/fallthrough
USER 65532:65532
# http, https (reserved: TLS is not implemented yet), admin (/metrics /healthz /readyz)
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/fallthrough"]
CMD ["run"]
