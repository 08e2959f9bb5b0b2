package dev.tfcnn.classifier

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Turns opaque ARGB_8888 pixels already at the contract's width x height (what [Resizer] returns)
 * into the exact bytes of the model's input tensor.
 *
 * Per pixel: take R, G, B (or BT.601 luma when the tensor has one channel); when the contract says
 * normalization is NOT in the graph, apply (v - mean) / std per channel; then write float32, or
 * quantize to uint8/int8 with q = round(v / scale) + zero_point, rounding half away from zero as
 * TFLite does, clamped to the type's range. Arithmetic is in double so the JVM and the Python
 * exporter produce the same bytes.
 */
class Preprocessor(
    private val input: InputSpec,
    private val tensor: TensorSpec,
    private val order: ByteOrder = ByteOrder.nativeOrder()
) {
    val width: Int
    val height: Int
    val channels: Int
    private val mean: DoubleArray
    private val std: DoubleArray

    init {
        val shape = tensor.shape
        if (shape.size != 4 || shape[0] != 1) {
            throw ContractException("model input is ${tensor.dims}; the app feeds one NHWC image (1xHxWxC)")
        }
        height = shape[1]
        width = shape[2]
        channels = shape[3]
        if (channels != 1 && channels != 3) {
            throw ContractException("model input is ${tensor.dims}; the app feeds 1 or 3 channels")
        }
        check(tensor.bytesPerElement > 0) // throws ContractException for unsupported dtypes
        val norm = input.normalization
        if (norm.inGraph) {
            mean = DoubleArray(channels)
            std = DoubleArray(channels) { 1.0 }
        } else {
            mean = perChannel(norm.mean, "mean")
            std = perChannel(norm.std, "std")
        }
    }

    private fun perChannel(values: DoubleArray, name: String): DoubleArray = when (values.size) {
        channels -> values
        1 -> DoubleArray(channels) { values[0] }
        else -> throw ContractException(
            "contract.json: input.normalization.$name has ${values.size} values but the model input has $channels channels"
        )
    }

    /** Input tensor bytes for one image; [argb] must be [width] x [height] pixels, row by row. */
    fun toInputBytes(argb: IntArray, width: Int, height: Int): ByteArray {
        if (width != this.width || height != this.height) {
            throw IllegalArgumentException(
                "image is ${width}x$height but the model input is ${tensor.dims}; " +
                    "resize with Resizer(${this.width}, ${this.height}, fit) first (ImageClassifier.classify does)"
            )
        }
        if (argb.size != width * height) {
            throw IllegalArgumentException("got ${argb.size} pixels for a ${width}x$height image")
        }
        val buffer = ByteBuffer.allocate(width * height * channels * tensor.bytesPerElement).order(order)
        val quant = tensor.quantization
        val normalize = !input.normalization.inGraph
        val dtype = tensor.dtype
        val values = DoubleArray(3)
        for (p in argb) {
            val r = ((p shr 16) and 0xFF).toDouble()
            val g = ((p shr 8) and 0xFF).toDouble()
            val b = (p and 0xFF).toDouble()
            if (channels == 3) {
                values[0] = r
                values[1] = g
                values[2] = b
            } else {
                values[0] = 0.299 * r + 0.587 * g + 0.114 * b
            }
            for (c in 0 until channels) {
                var v = values[c]
                if (normalize) v = (v - mean[c]) / std[c]
                when (dtype) {
                    "float32" -> buffer.putFloat(v.toFloat())
                    "uint8" -> buffer.put(quantize(v, quant, 0, 255).toByte())
                    "int8" -> buffer.put(quantize(v, quant, -128, 127).toByte())
                }
            }
        }
        return buffer.array()
    }

    companion object {
        /** Round half away from zero (C's round), the rule TFLite's quantizer uses. */
        fun roundHalfAway(x: Double): Double = if (x >= 0) Math.floor(x + 0.5) else -Math.floor(-x + 0.5)

        fun quantize(v: Double, quant: Quantization?, lo: Int, hi: Int): Int {
            val q = if (quant != null) roundHalfAway(v / quant.scale) + quant.zeroPoint else roundHalfAway(v)
            return when {
                q.isNaN() -> lo
                q < lo -> lo
                q > hi -> hi
                else -> q.toInt()
            }
        }
    }
}
