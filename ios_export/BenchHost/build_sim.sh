#!/usr/bin/env bash
# Build BenchHost.app for the iOS simulator with swiftc alone (no Xcode project). Needs macOS + Xcode.
# Usage: ios_export/BenchHost/build_sim.sh [OUTPUT.app]   (default: ios_export/BenchHost/build/BenchHost.app)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/build/BenchHost.app}"
arch="$(uname -m)"          # arm64 on Apple silicon, x86_64 on Intel Macs: the simulator runs the Mac's CPU
min_ios="16.0"              # MLComputeUnits.cpuAndNeuralEngine needs iOS 16
sdk="$(xcrun --sdk iphonesimulator --show-sdk-path)"
rm -rf "$out"
mkdir -p "$out"
xcrun --sdk iphonesimulator swiftc -O \
    -target "${arch}-apple-ios${min_ios}-simulator" -sdk "$sdk" \
    "$here/Sources/main.swift" -o "$out/BenchHost"
cp "$here/Info.plist" "$out/Info.plist"
codesign --force --sign - "$out"   # ad-hoc signature: all the simulator asks for
echo "$out"
