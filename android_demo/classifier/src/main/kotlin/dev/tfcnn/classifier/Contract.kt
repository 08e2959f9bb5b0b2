package dev.tfcnn.classifier

/** contract.json (or a file next to it) is missing a field or has a wrong value; the message names it. */
class ContractException(message: String) : RuntimeException(message)

/** Affine quantization of a tensor: real = (q - zeroPoint) * scale. */
class Quantization(val scale: Double, val zeroPoint: Int) {
    fun sameAs(other: Quantization?): Boolean {
        if (other == null || zeroPoint != other.zeroPoint) return false
        val tolerance = 1e-6 * Math.max(Math.abs(scale), Math.abs(other.scale))
        return Math.abs(scale - other.scale) <= tolerance
    }

    override fun toString(): String = "scale=$scale zero_point=$zeroPoint"

    companion object {
        /** LiteRT reports scale 0 for a tensor that is not quantized; treat that as no quantization. */
        fun of(scale: Double, zeroPoint: Int): Quantization? = if (scale == 0.0) null else Quantization(scale, zeroPoint)

        fun same(a: Quantization?, b: Quantization?): Boolean = if (a == null) b == null else a.sameAs(b)
    }
}

/** One model tensor as the contract records it, or as the runtime reports it. */
class TensorSpec(val name: String, val shape: IntArray, val dtype: String, val quantization: Quantization?) {
    val elementCount: Int
        get() {
            var n = 1
            for (d in shape) n *= d
            return n
        }

    val bytesPerElement: Int
        get() = when (dtype) {
            "float32" -> 4
            "uint8", "int8" -> 1
            else -> throw ContractException("tensor $name has dtype $dtype; the demo supports float32, uint8 and int8")
        }

    val dims: String get() = dimsOf(shape)

    companion object {
        fun dimsOf(shape: IntArray): String = shape.joinToString("x")

        fun parse(node: JsonNode): TensorSpec {
            val q = node["quantization"]
            val quant = if (q.isNull) null else Quantization.of(q["scale"].double(), q["zero_point"].int())
            return TensorSpec(node["name"].stringOr("") ?: "", node["shape"].ints(), node["dtype"].string(), quant)
        }
    }
}

class Normalization(val inGraph: Boolean, val mean: DoubleArray, val std: DoubleArray)

/**
 * The image the model wants: always RGB NHWC at a fixed size, see the tfcnn export contract.
 * [resize] (always "bilinear": Pillow's), [fit] and [alpha] ("over_black") say how a photo of
 * any size becomes that image; [resizer] does it.
 */
class InputSpec(
    val height: Int,
    val width: Int,
    val channels: Int,
    val dtype: String,
    val resize: String,
    val modelChannels: Int,
    val normalization: Normalization,
    val fit: Fit = Fit.STRETCH,
    val alpha: String = ALPHA_OVER_BLACK
) {
    val shape: IntArray get() = intArrayOf(1, height, width, channels)

    /** The contract's resize to width x height. */
    fun resizer(): Resizer = Resizer(width, height, fit)

    companion object {
        const val RESIZE_BILINEAR = "bilinear"
        const val ALPHA_OVER_BLACK = "over_black"
    }
}

class OutputSpec(val kind: String, val activation: String?, val numClasses: Int)

class ArtifactSpec(val format: String, val file: String, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

/** The block `tfcnn export --android` adds: which variant was copied, and its sha256. */
class AndroidInfo(val variant: String, val modelFile: String, val sha256: String?, val sourceVersionDir: String?)

/** A parsed contract.json. Parsing checks the parts the app relies on and names the field that is wrong. */
class Contract(
    val schema: String,
    val modelName: String,
    val modelVersion: Int?,
    val input: InputSpec,
    val output: OutputSpec,
    val labels: List<String>,
    val artifacts: Map<String, ArtifactSpec>,
    val android: AndroidInfo?
) {
    /** The artifact this contract travels with in the app (android.variant), or the named one. */
    fun artifact(variant: String? = android?.variant): ArtifactSpec? = if (variant == null) null else artifacts[variant]

    companion object {
        const val SCHEMA = "tfcnn.contract/1"

        fun parse(text: String, source: String = "contract.json"): Contract = fromNode(JsonNode.parse(text, source))

        fun fromNode(root: JsonNode): Contract {
            val schema = root["schema"].string()
            if (schema != SCHEMA) {
                throw ContractException("${root.source}: schema is \"$schema\" but this app reads \"$SCHEMA\"; update the app or re-export")
            }
            val inp = root["input"]
            val order = inp["color_order"].stringOr("RGB")
            if (order != "RGB") throw ContractException("${root.source}: input.color_order is \"$order\"; the app feeds RGB")
            val layout = inp["layout"].stringOr("NHWC")
            if (layout != "NHWC") throw ContractException("${root.source}: input.layout is \"$layout\"; the app feeds NHWC")
            val channels = inp["channels"].int()
            if (channels != 1 && channels != 3) {
                throw ContractException("${root.source}: input.channels is $channels; the app supports 1 or 3")
            }
            val height = inp["height"].int()
            val width = inp["width"].int()
            if (height < 1 || width < 1) throw ContractException("${root.source}: input.height/width must be >= 1, got ${height}x$width")
            val norm = inp["normalization"]
            val normalization = if (norm.isNull) {
                Normalization(true, DoubleArray(0), DoubleArray(0))
            } else {
                val inGraph = norm["in_graph"].bool()
                Normalization(
                    inGraph,
                    if (norm["mean"].isNull && inGraph) DoubleArray(0) else norm["mean"].doubles(),
                    if (norm["std"].isNull && inGraph) DoubleArray(0) else norm["std"].doubles()
                )
            }
            for (i in normalization.std.indices) {
                if (!normalization.inGraph && normalization.std[i] == 0.0) {
                    throw ContractException("${root.source}: input.normalization.std[$i] is 0")
                }
            }
            // Contracts written before fit/alpha were recorded meant exactly these defaults.
            val resize = inp["resize"].stringOr(InputSpec.RESIZE_BILINEAR) ?: InputSpec.RESIZE_BILINEAR
            if (resize != InputSpec.RESIZE_BILINEAR) {
                throw ContractException("${root.source}: input.resize is \"$resize\"; the app implements only \"bilinear\" (Pillow's)")
            }
            val alpha = inp["alpha"].stringOr(InputSpec.ALPHA_OVER_BLACK) ?: InputSpec.ALPHA_OVER_BLACK
            if (alpha != InputSpec.ALPHA_OVER_BLACK) {
                throw ContractException("${root.source}: input.alpha is \"$alpha\"; the app composites over black (\"over_black\") only")
            }
            val input = InputSpec(
                height, width, channels,
                inp["dtype"].string(),
                resize,
                inp["model_channels"].intOr(channels) ?: channels,
                normalization,
                Fit.parse(inp["fit"].stringOr(Fit.STRETCH.key) ?: Fit.STRETCH.key, root.source),
                alpha
            )
            val out = root["output"]
            val output = OutputSpec(
                out["kind"].stringOr("probabilities") ?: "probabilities",
                out["activation"].stringOr(null),
                out["num_classes"].int()
            )
            val labelNames = root["labels"]["names"]
            val labels = if (labelNames.isNull) emptyList() else labelNames.list().map { it.string() }
            val artifacts = LinkedHashMap<String, ArtifactSpec>()
            val arts = root["artifacts"]
            if (!arts.isNull) {
                for (key in arts.keys()) {
                    val a = arts[key]
                    val ins = if (a["inputs"].isNull) emptyList() else a["inputs"].list().map { TensorSpec.parse(it) }
                    val outs = if (a["outputs"].isNull) emptyList() else a["outputs"].list().map { TensorSpec.parse(it) }
                    artifacts[key] = ArtifactSpec(a["format"].stringOr("") ?: "", a["file"].stringOr("") ?: "", ins, outs)
                }
            }
            val androidNode = root["android"]
            val android = if (androidNode.isNull) null else AndroidInfo(
                androidNode["variant"].string(),
                androidNode["model_file"].stringOr("model.tflite") ?: "model.tflite",
                androidNode["sha256"].stringOr(null),
                androidNode["source_version_dir"].stringOr(null)
            )
            val model = root["model"]
            return Contract(
                schema,
                if (model.isNull) "" else model["name"].stringOr("") ?: "",
                if (model.isNull) null else model["version"].intOr(null),
                input, output, labels, artifacts, android
            )
        }
    }
}

/** labels.txt: one label per line, in output order; a trailing newline or blank last lines are ignored. */
object Labels {
    fun parse(text: String): List<String> {
        val lines = text.lines().toMutableList()
        while (lines.isNotEmpty() && lines[lines.size - 1].isBlank()) lines.removeAt(lines.size - 1)
        return lines
    }
}
