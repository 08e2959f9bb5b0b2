package dev.tfcnn.classifier

import java.nio.ByteBuffer
import java.nio.ByteOrder

/** One ranked class: its index in labels.txt, its label and its probability. */
class Prediction(val index: Int, val label: String, val score: Double) {
    override fun toString(): String = "#$index $label ${"%.6f".format(java.util.Locale.ROOT, score)}"
}

/**
 * Reads the model's raw output tensor back into class probabilities: float32 as is, uint8/int8
 * dequantized as (q - zero_point) * scale; a contract whose output kind is "logits" gets a softmax.
 */
class Postprocessor(
    private val output: OutputSpec,
    private val tensor: TensorSpec,
    private val labels: List<String>,
    private val order: ByteOrder = ByteOrder.nativeOrder()
) {
    val size: Int = tensor.elementCount

    fun scores(raw: ByteArray): DoubleArray {
        val expected = size * tensor.bytesPerElement
        if (raw.size != expected) {
            throw IllegalArgumentException("output tensor ${tensor.dims} ${tensor.dtype} needs $expected bytes, got ${raw.size}")
        }
        val q = tensor.quantization
        val scores = DoubleArray(size)
        when (tensor.dtype) {
            "float32" -> {
                val buffer = ByteBuffer.wrap(raw).order(order)
                for (i in 0 until size) scores[i] = buffer.getFloat(4 * i).toDouble()
            }
            "uint8" -> for (i in 0 until size) scores[i] = dequantize(raw[i].toInt() and 0xFF, q)
            "int8" -> for (i in 0 until size) scores[i] = dequantize(raw[i].toInt(), q)
        }
        return if (output.kind == "logits") softmax(scores) else scores
    }

    fun topK(raw: ByteArray, k: Int): List<Prediction> = TopK.select(scores(raw), labels, k)

    companion object {
        fun dequantize(q: Int, quant: Quantization?): Double =
            if (quant == null) q.toDouble() else (q - quant.zeroPoint).toDouble() * quant.scale

        fun softmax(logits: DoubleArray): DoubleArray {
            if (logits.isEmpty()) return logits
            var max = logits[0]
            for (v in logits) if (v > max) max = v
            val e = DoubleArray(logits.size) { Math.exp(logits[it] - max) }
            var sum = 0.0
            for (v in e) sum += v
            return DoubleArray(e.size) { e[it] / sum }
        }
    }
}

object TopK {
    /** The k highest scores, highest first; equal scores keep label order (quantized outputs tie often). */
    fun select(scores: DoubleArray, labels: List<String>, k: Int): List<Prediction> {
        val order = scores.indices.sortedWith(Comparator { a, b ->
            val byScore = scores[b].compareTo(scores[a])
            if (byScore != 0) byScore else a.compareTo(b)
        })
        return order.take(Math.max(k, 0)).map { Prediction(it, if (it < labels.size) labels[it] else "class $it", scores[it]) }
    }
}
