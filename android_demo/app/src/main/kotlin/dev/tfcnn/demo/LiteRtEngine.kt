package dev.tfcnn.demo

import dev.tfcnn.classifier.InferenceEngine
import dev.tfcnn.classifier.Quantization
import dev.tfcnn.classifier.TensorSpec
import org.tensorflow.lite.DataType
import org.tensorflow.lite.InterpreterApi
import org.tensorflow.lite.Tensor
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * [InferenceEngine] on the LiteRT interpreter (bundled CPU runtime). Tensor specs come from the
 * interpreter itself, so ModelSpec compares contract.json with what the model really is.
 * Not thread-safe: use it from one thread (MainActivity's worker).
 */
class LiteRtEngine private constructor(
    @Suppress("unused") private val model: ByteBuffer, // the interpreter reads from this buffer: keep it alive
    private val interpreter: InterpreterApi
) : InferenceEngine {

    override val inputTensor: TensorSpec = spec(interpreter.getInputTensor(0))
    override val outputTensor: TensorSpec = spec(interpreter.getOutputTensor(0))
    private val inputBuffer: ByteBuffer =
        ByteBuffer.allocateDirect(interpreter.getInputTensor(0).numBytes()).order(ByteOrder.nativeOrder())
    private val outputBuffer: ByteBuffer =
        ByteBuffer.allocateDirect(interpreter.getOutputTensor(0).numBytes()).order(ByteOrder.nativeOrder())

    override fun run(input: ByteArray): ByteArray {
        require(input.size == inputBuffer.capacity()) {
            "input has ${input.size} bytes but the model input ${inputTensor.dims} ${inputTensor.dtype} needs ${inputBuffer.capacity()}"
        }
        inputBuffer.clear()
        inputBuffer.put(input)
        inputBuffer.rewind()
        outputBuffer.clear()
        interpreter.run(inputBuffer, outputBuffer)
        outputBuffer.rewind()
        val out = ByteArray(outputBuffer.capacity())
        outputBuffer.get(out)
        return out
    }

    override fun close() = interpreter.close()

    companion object {
        /** Loads a .tflite flatbuffer; throws IllegalArgumentException when LiteRT cannot read it. */
        fun create(modelBytes: ByteArray, threads: Int): LiteRtEngine {
            val model = ByteBuffer.allocateDirect(modelBytes.size).order(ByteOrder.nativeOrder())
            model.put(modelBytes)
            model.rewind()
            val interpreter = InterpreterApi.create(model, InterpreterApi.Options().setNumThreads(threads))
            try {
                check(interpreter.inputTensorCount == 1 && interpreter.outputTensorCount == 1) {
                    "model has ${interpreter.inputTensorCount} inputs and ${interpreter.outputTensorCount} outputs; " +
                        "the tfcnn contract has one image input and one probabilities output"
                }
                return LiteRtEngine(model, interpreter)
            } catch (e: RuntimeException) {
                interpreter.close()
                throw e
            }
        }

        private fun spec(t: Tensor): TensorSpec {
            val dtype = when (t.dataType()) {
                DataType.FLOAT32 -> "float32"
                DataType.UINT8 -> "uint8"
                DataType.INT8 -> "int8"
                else -> "unsupported ${t.dataType()}"
            }
            val q = t.quantizationParams()
            return TensorSpec(t.name(), t.shape(), dtype, Quantization.of(q.scale.toDouble(), q.zeroPoint))
        }
    }
}
