package dev.tfcnn.classifier

import java.io.Closeable

/**
 * A runtime that runs the model on one prepared input tensor. The app implements it with the LiteRT
 * interpreter; JVM tests replay recorded outputs. Tensor specs are what the runtime reports, not
 * what the contract claims, so [ModelSpec] can compare the two.
 */
interface InferenceEngine : Closeable {
    val inputTensor: TensorSpec
    val outputTensor: TensorSpec

    /** Raw output tensor bytes for raw input tensor bytes (native byte order for float32). */
    fun run(input: ByteArray): ByteArray
}
