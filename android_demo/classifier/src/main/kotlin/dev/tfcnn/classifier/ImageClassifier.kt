package dev.tfcnn.classifier

import java.io.Closeable
import java.nio.ByteOrder
import java.security.MessageDigest

/** Top-k predictions for one image, and how long the model itself took. */
class Classification(val top: List<Prediction>, val inferenceMillis: Double)

/**
 * Contract + labels + engine, checked against each other once: construction throws
 * [ModelMismatchException] when they disagree, so the app can show why instead of misclassifying.
 */
class ImageClassifier(
    val contract: Contract,
    val labels: List<String>,
    private val engine: InferenceEngine,
    modelSha256: String? = null,
    order: ByteOrder = ByteOrder.nativeOrder()
) : Closeable {
    private val preprocessor: Preprocessor
    private val postprocessor: Postprocessor

    /** The contract's resize (bilinear, input.fit, alpha over black) to the model's width x height. */
    val resizer: Resizer

    init {
        ModelSpec.require(contract, labels, engine.inputTensor, engine.outputTensor, modelSha256)
        preprocessor = Preprocessor(contract.input, engine.inputTensor, order)
        postprocessor = Postprocessor(contract.output, engine.outputTensor, labels, order)
        resizer = Resizer(preprocessor.width, preprocessor.height, contract.input.fit)
    }

    /** The model's input size (the contract's width x height); [classify] resizes to it. */
    val inputWidth: Int get() = preprocessor.width
    val inputHeight: Int get() = preprocessor.height

    /** Top-[k] for straight-alpha ARGB pixels of any size: resized exactly as the Python side does. */
    fun classify(argb: IntArray, width: Int, height: Int, k: Int = 3): Classification =
        classifyResized(resizer.resize(argb, width, height), k)

    /** Same, reading the image one row at a time (see [Resizer.resize]), e.g. from a Bitmap. */
    fun classify(width: Int, height: Int, k: Int = 3, rows: (Int, IntArray) -> Unit): Classification =
        classifyResized(resizer.resize(width, height, rows), k)

    private fun classifyResized(pixels: IntArray, k: Int): Classification {
        val input = preprocessor.toInputBytes(pixels, preprocessor.width, preprocessor.height)
        val start = System.nanoTime()
        val raw = engine.run(input)
        val millis = (System.nanoTime() - start) / 1e6
        return Classification(postprocessor.topK(raw, k), millis)
    }

    override fun close() = engine.close()

    companion object {
        fun sha256(bytes: ByteArray): String {
            val digest = MessageDigest.getInstance("SHA-256").digest(bytes)
            val sb = StringBuilder(digest.size * 2)
            for (b in digest) {
                val v = b.toInt() and 0xFF
                sb.append(HEX[v shr 4]).append(HEX[v and 0x0F])
            }
            return sb.toString()
        }

        private const val HEX = "0123456789abcdef"
    }
}
