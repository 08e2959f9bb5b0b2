package dev.tfcnn.classifier

import java.io.File
import java.util.Base64

/** A contract.json text for unit tests, shaped like the exporter's (tfcnn.contract/1). */
fun contractJson(
    height: Int = 2,
    width: Int = 2,
    channels: Int = 3,
    dtype: String = "uint8",
    inGraph: Boolean = true,
    mean: String = "[72.9]",
    std: String = "[90.0]",
    numClasses: Int = 3,
    labels: String = "[\"cat\", \"dog\", \"bird\"]",
    kind: String = "probabilities",
    inputQuant: String = "null",
    outputDtype: String = "uint8",
    outputQuant: String = "{\"scale\": 0.00390625, \"zero_point\": 0}",
    android: String = "{\"variant\": \"tflite_int8\", \"model_file\": \"model.tflite\", \"sha256\": \"abc123\"}"
): String = """
{
  "schema": "tfcnn.contract/1",
  "model": {"name": "unit", "version": 1},
  "input": {"height": $height, "width": $width, "channels": $channels, "color_order": "RGB", "layout": "NHWC",
            "dtype": "$dtype", "value_range": [0, 255], "resize": "bilinear", "model_channels": 1,
            "grayscale": "in_graph: 0.299*R + 0.587*G + 0.114*B",
            "normalization": {"in_graph": $inGraph, "mean": $mean, "std": $std, "formula": "(x - mean) / std"}},
  "output": {"kind": "$kind", "activation": "softmax", "num_classes": $numClasses},
  "labels": {"file": "labels.txt", "names": $labels},
  "artifacts": {
    "savedmodel": {"format": "savedmodel", "file": ".", "signatures": {"serving_default": {}}},
    "tflite_int8": {"format": "tflite", "file": "tflite/model_int8.tflite",
      "inputs": [{"name": "image", "shape": [1, $height, $width, $channels], "dtype": "$dtype", "quantization": $inputQuant}],
      "outputs": [{"name": "probabilities", "shape": [1, $numClasses], "dtype": "$outputDtype", "quantization": $outputQuant}]}
  },
  "android": $android
}
"""

/** The golden vectors `tfcnn export --android` wrote: from -Dtfcnn.golden.dir, else the test resources. */
class Golden(text: String, val where: String, private val dir: File? = null) {
    val root = JsonNode.parse(text, where)
    val contract: Contract = Contract.fromNode(JsonNode(root["contract"].value, "", true, "$where contract"))
    val labels: List<String> = root["labels"].list().map { it.string() }
    val modelSha256: String = root["model_sha256"].string()
    val input: TensorSpec = TensorSpec.parse(root["model_tensors"]["input"])
    val output: TensorSpec = TensorSpec.parse(root["model_tensors"]["output"])
    val k: Int = root["k"].int()
    val samples: List<JsonNode> = root["samples"].list()

    /** Real PNGs of other sizes (the resize path); golden.json before schema 2 has none. */
    val photos: List<JsonNode> = if (root["photos"].isNull) emptyList() else root["photos"].list()

    /** The bytes of golden photo [name]: photos/ next to golden.json, or on the test classpath. */
    fun photoBytes(name: String): ByteArray {
        if (dir != null) {
            val file = File(File(dir, "photos"), name)
            if (!file.isFile) throw AssertionError("$file is missing; golden.json names it (restore android_demo's photos from git)")
            return file.readBytes()
        }
        val resource = Golden::class.java.getResource("/golden/photos/$name")
            ?: throw AssertionError("golden/photos/$name is not on the test classpath; golden.json names it")
        return resource.readBytes()
    }

    init {
        val order = root["byte_order"].string()
        if (order != "little") throw AssertionError("$where: byte_order $order; the tests read little-endian tensors")
    }

    fun argb(s: JsonNode): IntArray = s["argb"].list().map { it.value as Long }.map { it.toInt() }.toIntArray()

    fun inputBytes(s: JsonNode): ByteArray = Base64.getDecoder().decode(s["input_b64"].string())

    /** The recorded raw output tensor as the bytes LiteRT produced (little-endian for float32). */
    fun outputBytes(s: JsonNode): ByteArray {
        val values = s["output_raw"].list()
        return when (output.dtype) {
            "float32" -> {
                val buffer = java.nio.ByteBuffer.allocate(4 * values.size).order(java.nio.ByteOrder.LITTLE_ENDIAN)
                for (v in values) buffer.putFloat(v.double().toFloat())
                buffer.array()
            }
            else -> ByteArray(values.size) { values[it].int().toByte() }
        }
    }

    companion object {
        fun load(): Golden {
            val dir = System.getProperty("tfcnn.golden.dir")
            if (dir != null && dir.isNotBlank()) {
                val file = File(dir, "golden.json")
                if (!file.isFile) throw AssertionError("$file is missing; run `tfcnn export RUN_DIR --android android_demo`")
                return Golden(file.readText(), file.path, File(dir))
            }
            val resource = Golden::class.java.getResource("/golden/golden.json")
                ?: throw AssertionError("golden/golden.json is not on the test classpath; run `tfcnn export RUN_DIR --android android_demo`")
            return Golden(resource.readText(), "classpath:golden/golden.json")
        }
    }
}

/** Replays recorded outputs: fails loudly when asked about an input that was never recorded. */
class RecordedEngine(
    override val inputTensor: TensorSpec,
    override val outputTensor: TensorSpec,
    private val recordings: Map<String, ByteArray>
) : InferenceEngine {
    var calls = 0
    var closed = false

    override fun run(input: ByteArray): ByteArray {
        calls++
        val key = Base64.getEncoder().encodeToString(input)
        return recordings[key] ?: throw AssertionError("input bytes were never recorded for this model")
    }

    override fun close() {
        closed = true
    }
}
