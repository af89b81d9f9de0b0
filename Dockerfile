# syntax=docker/dockerfile:1.7
# The one `teachin` image: every role (`teachin manager|accessor|engine`), the migration
# (`teachin migrate`) and the cron commands run from it, chosen by the container's args.
#
# Stage 1 compiles the binary with the workspace's locked dependencies. Stage 2 ships only
# that binary on distroless (glibc and CA certificates, no shell, no package manager) as an
# unprivileged user, so the runtime image is small and has almost nothing to exploit.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds on the same builder; the
# binary is copied out of the cached target dir so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin teachin \
 && install -D -m 0755 target/release/teachin /out/teachin

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/teachin /usr/local/bin/teachin
# distroless's `nonroot` user; the Helm chart runs the pods as the same UID with a read-only
# root filesystem.
USER 65532:65532
ENV TEACHIN_LOG_FORMAT=json
# manager, accessor, engine
EXPOSE 5001 5002 5003
ENTRYPOINT ["/usr/local/bin/teachin"]
# Locally, one process runs every role; Kubernetes passes the role instead.
CMD ["all"]
