// BenchHost: the iOS app `deepcompress bench --device simctl:UDID ARTIFACT.mlpackage` launches.
//
// Protocol (device_harness/runners/_benchhost.py is the other side; tests/fixtures/fake_xcrun
// plays this app in the Linux tests):
//   in:  environment variables (simctl passes SIMCTL_CHILD_X as X); paths are relative to the
//        app's Documents folder unless absolute
//          DEEPCOMPRESS_MODEL          .mlpackage (compiled here) or .mlmodelc
//          DEEPCOMPRESS_RUNS           timed predictions (default 50)
//          DEEPCOMPRESS_WARMUP         untimed predictions first (default 5)
//          DEEPCOMPRESS_COMPUTE_UNITS  all | cpuOnly | cpuAndGPU | cpuAndNeuralEngine
//          DEEPCOMPRESS_RESULT         result file name (default deepcompress_result.json)
//          DEEPCOMPRESS_EVAL_INPUT / _EVAL_COUNT / _EVAL_OUTPUT   optional: raw little-endian
//                                      float32 examples in, first output of each out
//   out: the result JSON (schema deepcompress.runner/1, the LiteRT runner's too), then one line
//        "DEEPCOMPRESS_BENCHHOST_DONE <file>" on stdout, or "DEEPCOMPRESS_BENCHHOST_ERROR <why>".
//
// It runs top to bottom and exits: no UI, no run loop. Build: see README.md beside this folder.
import CoreML
import Darwin
import Foundation

let schema = "deepcompress.runner/1"
let doneMarker = "DEEPCOMPRESS_BENCHHOST_DONE"
let errorMarker = "DEEPCOMPRESS_BENCHHOST_ERROR"

struct BenchError: Error, CustomStringConvertible {
    let description: String
}

struct Config {
    let model: URL
    let runs: Int
    let warmup: Int
    let computeUnits: MLComputeUnits
    let computeUnitsName: String
    let result: URL
    let evalInput: URL?
    let evalOutput: URL?
    let evalCount: Int

    static func fromEnvironment(documents: URL) throws -> Config {
        let env = ProcessInfo.processInfo.environment
        func path(_ key: String) -> URL? {
            guard let value = env[key], !value.isEmpty else { return nil }
            return value.hasPrefix("/") ? URL(fileURLWithPath: value) : documents.appendingPathComponent(value)
        }
        func nonNegative(_ key: String, _ fallback: Int) throws -> Int {
            guard let raw = env[key] else { return fallback }
            guard let value = Int(raw), value >= 0 else {
                throw BenchError(description: "\(key)=\(raw) is not a non-negative integer")
            }
            return value
        }
        guard let model = path("DEEPCOMPRESS_MODEL") else {
            throw BenchError(description: "DEEPCOMPRESS_MODEL is not set")
        }
        let unitsName = env["DEEPCOMPRESS_COMPUTE_UNITS"] ?? "all"
        let units: MLComputeUnits
        switch unitsName {
        case "all": units = .all
        case "cpuOnly": units = .cpuOnly
        case "cpuAndGPU": units = .cpuAndGPU
        case "cpuAndNeuralEngine": units = .cpuAndNeuralEngine
        default:
            throw BenchError(description: "DEEPCOMPRESS_COMPUTE_UNITS=\(unitsName): expected all, "
                             + "cpuOnly, cpuAndGPU or cpuAndNeuralEngine")
        }
        return Config(model: model,
                      runs: try nonNegative("DEEPCOMPRESS_RUNS", 50),
                      warmup: try nonNegative("DEEPCOMPRESS_WARMUP", 5),
                      computeUnits: units, computeUnitsName: unitsName,
                      result: path("DEEPCOMPRESS_RESULT") ?? documents.appendingPathComponent("deepcompress_result.json"),
                      evalInput: path("DEEPCOMPRESS_EVAL_INPUT"),
                      evalOutput: path("DEEPCOMPRESS_EVAL_OUTPUT"),
                      evalCount: try nonNegative("DEEPCOMPRESS_EVAL_COUNT", 0))
    }
}

/// Monotonic nanoseconds; not affected by clock changes, and counts no time asleep.
func nowNs() -> UInt64 { clock_gettime_nsec_np(CLOCK_UPTIME_RAW) }
func millis(_ start: UInt64, _ end: UInt64) -> Double { Double(end - start) / 1e6 }

/// Physical footprint now and at its peak, in bytes: what jetsam and Xcode's memory gauge count.
func memoryFootprint() -> (current: UInt64, peak: UInt64) {
    var info = task_vm_info_data_t()
    var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<integer_t>.size)
    let kr = withUnsafeMutablePointer(to: &info) {
        $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
            task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
        }
    }
    guard kr == KERN_SUCCESS else { return (0, 0) }
    return (UInt64(info.phys_footprint), UInt64(max(0, info.ledger_phys_footprint_peak)))
}

/// Deterministic inputs in [0, 1): the same figures run after run (SplitMix64).
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Double((z ^ (z >> 31)) >> 11) / Double(1 << 53)
    }
}

func tensorInputs(_ model: MLModel) throws -> [(String, MLMultiArrayConstraint)] {
    var inputs: [(String, MLMultiArrayConstraint)] = []
    for name in model.modelDescription.inputDescriptionsByName.keys.sorted() {
        let desc = model.modelDescription.inputDescriptionsByName[name]!
        guard desc.type == .multiArray, let constraint = desc.multiArrayConstraint else {
            throw BenchError(description: "input \(name) is not a multi-array; BenchHost feeds tensors only")
        }
        inputs.append((name, constraint))
    }
    return inputs
}

func randomInput(_ model: MLModel) throws -> MLFeatureProvider {
    var rng = SplitMix64(state: 0)
    var features: [String: MLFeatureValue] = [:]
    for (name, constraint) in try tensorInputs(model) {
        let array = try MLMultiArray(shape: constraint.shape, dataType: constraint.dataType)
        for i in 0..<array.count { array[i] = NSNumber(value: rng.next()) }
        features[name] = MLFeatureValue(multiArray: array)
    }
    return try MLDictionaryFeatureProvider(dictionary: features)
}

/// Every eval example through the model, first output of each appended as float32.
func runEval(_ model: MLModel, _ config: Config) throws -> Int {
    guard let inputURL = config.evalInput, let outputURL = config.evalOutput, config.evalCount > 0 else { return 0 }
    let inputs = try tensorInputs(model)
    guard inputs.count == 1 else {
        throw BenchError(description: "eval needs a model with exactly one input, this one has \(inputs.count)")
    }
    let (name, constraint) = inputs[0]
    guard let outputName = model.modelDescription.outputDescriptionsByName.keys.sorted().first else {
        throw BenchError(description: "the model has no output")
    }
    let data = try Data(contentsOf: inputURL)
    let floats: [Float] = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    let perExample = constraint.shape.dropFirst().reduce(1) { $0 * $1.intValue }
    guard floats.count == perExample * config.evalCount else {
        throw BenchError(description: "eval input holds \(floats.count) values, expected \(config.evalCount) x \(perExample)")
    }
    var out = Data()
    for example in 0..<config.evalCount {
        let array = try MLMultiArray(shape: constraint.shape, dataType: constraint.dataType)
        for j in 0..<perExample { array[j] = NSNumber(value: floats[example * perExample + j]) }
        let features = try MLDictionaryFeatureProvider(dictionary: [name: MLFeatureValue(multiArray: array)])
        guard let y = try model.prediction(from: features).featureValue(for: outputName)?.multiArrayValue else {
            throw BenchError(description: "output \(outputName) is not a multi-array")
        }
        for k in 0..<y.count {
            var value = y[k].floatValue
            withUnsafeBytes(of: &value) { out.append(contentsOf: $0) }
        }
    }
    try out.write(to: outputURL, options: .atomic)
    return config.evalCount
}

func benchmark(_ config: Config) throws -> [String: Any] {
    let before = memoryFootprint()      // the app without the model
    let start = nowNs()
    let compiled = config.model.pathExtension == "mlmodelc" ? config.model : try MLModel.compileModel(at: config.model)
    let compiledAt = nowNs()
    let mlConfig = MLModelConfiguration()
    mlConfig.computeUnits = config.computeUnits
    let model = try MLModel(contentsOf: compiled, configuration: mlConfig)
    let loadedAt = nowNs()

    let input = try randomInput(model)
    var warmupMs: [Double] = []
    for _ in 0..<config.warmup {
        let t = nowNs()
        _ = try model.prediction(from: input)
        warmupMs.append(millis(t, nowNs()))
    }
    var latencies: [Double] = []
    latencies.reserveCapacity(config.runs)
    for _ in 0..<config.runs {
        let t = nowNs()
        _ = try model.prediction(from: input)
        latencies.append(millis(t, nowNs()))
    }
    var result: [String: Any] = [
        "schema": schema, "runner": "benchhost-coreml",
        "compile_ms": millis(start, compiledAt), "init_ms": millis(compiledAt, loadedAt),
        "first_ms": warmupMs.first.map { $0 as Any } ?? NSNull(),
        "warmup": config.warmup, "warmup_ms": warmupMs, "latencies_ms": latencies,
        "compute_units": config.computeUnitsName,
        "runtime": ["os": ProcessInfo.processInfo.operatingSystemVersionString],
    ]
    // The model's own peak: the footprint's peak with it (compile, load, every prediction) minus
    // the footprint before it; unknown when the app had peaked higher before (that would hide it).
    let withModel = memoryFootprint()
    if withModel.peak > before.peak && withModel.peak >= before.current {
        result["model_memory_kb"] = (withModel.peak - before.current) / 1024
        result["model_memory_source"] = "phys_footprint peak with the model minus before it"
    }
    let evaluated = try runEval(model, config)
    if evaluated > 0 { result["eval"] = ["count": evaluated] }
    // Last, so the peak covers compile, load, every prediction and the eval.
    let memory = memoryFootprint()
    result["peak_memory_kb"] = memory.peak / 1024
    result["memory_source"] = "phys_footprint"
    return result
}

func writeJSON(_ object: [String: Any], to url: URL) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try data.write(to: url, options: .atomic)
}

let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
do {
    let config = try Config.fromEnvironment(documents: documents)
    try writeJSON(try benchmark(config), to: config.result)
    print("\(doneMarker) \(config.result.lastPathComponent)")
} catch {
    let message = "\(error)".replacingOccurrences(of: "\n", with: " ")
    try? writeJSON(["schema": schema, "error": message],
                   to: documents.appendingPathComponent("deepcompress_result.json"))
    print("\(errorMarker) \(message)")
}
fflush(stdout)
exit(0)
