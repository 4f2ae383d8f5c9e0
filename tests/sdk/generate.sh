#!/usr/bin/env bash
# Regenerates tests/sdk/generated/*.js from tests/sdk/proto/*.proto.
#
# The output is committed; tests never run this script and never need protoc.
# Run it by hand only after editing a .proto file, then commit the result.
#
# Pinned tools:
#   protoc      3.21.12  (Debian 12: apt-get install -y protobuf-compiler=3.21.12-3+deb12u1)
#   ts-proto    1.181.2  (same version @restatedev/restate-sdk@0.4.1 resolves to in package-lock.json)
#   typescript  5.4.5
#   @types/node 20.11.30
#
# ts-proto options are the ones the SDK 0.4.1 used for its own generated code
# (sdk-typescript buf.gen.yaml): outputSchema=true (emits `protoMetadata`, which
# RestateServer.bindService({descriptor, service, instance}) consumes),
# env=node, esModuleInterop=true, lowerCaseServiceMethods=true,
# paths=source_relative, useExactTypes=false.
# Note: int64 fields map to JS numbers (ts-proto default forceLong=number);
# decoding a value outside +-(2^53-1) throws.
set -euo pipefail

PROTOC_VERSION=3.21.12
TS_PROTO_VERSION=1.181.2
TYPESCRIPT_VERSION=5.4.5
TYPES_NODE_VERSION=20.11.30

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$(mktemp -d /tmp/restate-sdk-gen.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

command -v protoc >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler" >&2; exit 1; }
have="$(protoc --version | awk '{print $2}')"
if [ "$have" != "$PROTOC_VERSION" ]; then
  echo "warning: protoc $have found, $PROTOC_VERSION expected (the version lands in the file headers)" >&2
fi
# descriptor.proto ships with protoc (/usr/include on Debian).
PROTOC_INCLUDE="${PROTOC_INCLUDE:-/usr/include}"
test -f "$PROTOC_INCLUDE/google/protobuf/descriptor.proto" \
  || { echo "google/protobuf/descriptor.proto not under $PROTOC_INCLUDE (set PROTOC_INCLUDE)" >&2; exit 1; }

# Generator toolchain lives outside the repository.
(cd "$WORK" && npm init -y >/dev/null \
  && npm install --no-audit --no-fund --save-exact \
       "ts-proto@$TS_PROTO_VERSION" "typescript@$TYPESCRIPT_VERSION" "@types/node@$TYPES_NODE_VERSION" >/dev/null)

mkdir -p "$WORK/ts"
(cd "$HERE/proto" && protoc \
  --plugin=protoc-gen-ts_proto="$WORK/node_modules/.bin/protoc-gen-ts_proto" \
  --ts_proto_out="$WORK/ts" \
  --ts_proto_opt=outputSchema=true,env=node,esModuleInterop=true,lowerCaseServiceMethods=true,paths=source_relative,useExactTypes=false \
  -I . -I "$PROTOC_INCLUDE" \
  greeter.proto)
# ts-proto also emits the imported files: dev/restate/ext.ts and google/protobuf/descriptor.ts.

cat > "$WORK/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "target": "es2020",
    "module": "commonjs",
    "esModuleInterop": true,
    "strict": true,
    "skipLibCheck": true,
    "declaration": false,
    "sourceMap": false,
    "types": ["node"],
    "rootDir": "ts",
    "outDir": "js"
  },
  "include": ["ts/**/*.ts"]
}
EOF
(cd "$WORK" && ./node_modules/.bin/tsc -p tsconfig.json)

# Only the CommonJS .js files are kept. At runtime they require `long`,
# `protobufjs/minimal` and `ts-proto-descriptors`, which @restatedev/restate-sdk
# already pulls into tests/sdk/node_modules.
rm -rf "$HERE/generated"
mkdir -p "$HERE/generated"
(cd "$WORK/js" && find . -name '*.js' -print0 | while IFS= read -r -d '' f; do
  mkdir -p "$HERE/generated/$(dirname "$f")"
  cp "$f" "$HERE/generated/$f"
done)
find "$HERE/generated" -type f | sort
