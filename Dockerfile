# syntax=docker/dockerfile:1.7
# The one `teachin` image: every role (`teachin manager|accessor|engine`), the migration
# (`teachin migrate`) and the cron commands run from it, chosen by the container's args.
#
# The build is split so that a code-only change does not recompile the dependencies
# (cargo-chef): `planner` reduces the workspace to a recipe (manifests, lockfile, crate
# layout), `deps` compiles every dependency from the recipe alone, in a layer that stays
# cached (GitHub's cache, build-and-push's cache-to/cache-from) until Cargo.toml/Cargo.lock
# change; `build` then compiles only the workspace's own crates. The final stage ships only
# the binary on distroless (glibc and CA certificates, no shell, no package manager) as an
# unprivileged user, so the runtime image is small and has almost nothing to exploit.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# From crates.io, pinned; the tool only reads manifests and drives cargo.
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS deps
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer depends on recipe.json, not on the workspace's sources.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin teachin

FROM deps AS build
COPY . .
RUN cargo build --release --locked --bin teachin \
 && install -D -m 0755 target/release/teachin /out/teachin

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/teachin /usr/local/bin/teachin
# distroless's `nonroot` user; the Helm chart runs the pods as the same UID with a read-only
# root filesystem.
USER 65532:65532
ENV TEACHIN_LOG_FORMAT=json
# Never local mode by accident: local mode runs on the secrets published in this repository.
# Production refuses to start without secrets of its own; the chart sets the real name
# (dev, prod, ...) and a laptop asks for local mode with `-e TEACHIN_ENV=local`.
ENV TEACHIN_ENV=production
# manager, accessor, engine
EXPOSE 5001 5002 5003
ENTRYPOINT ["/usr/local/bin/teachin"]
# One process runs every role (with `-e TEACHIN_ENV=local` on a laptop); Kubernetes passes
# the role instead.
CMD ["all"]
