package dev.tfcnn.classifier

import org.junit.Assert.assertEquals
import org.junit.Assert.fail
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder

class PostprocessorTest {
    private val labels = listOf("cat", "dog", "bird", "fish")
    private val probs = OutputSpec("probabilities", "softmax", 4)

    private fun post(dtype: String, quant: Quantization?, output: OutputSpec = probs) =
        Postprocessor(output, TensorSpec("p", intArrayOf(1, 4), dtype, quant), labels, ByteOrder.LITTLE_ENDIAN)

    @Test
    fun dequantizesUint8() {
        val scores = post("uint8", Quantization(1.0 / 256, 0)).scores(byteArrayOf(0, 64, 255.toByte(), 128.toByte()))
        assertEquals(listOf(0.0, 0.25, 255.0 / 256, 0.5), scores.toList())
    }

    @Test
    fun dequantizesInt8WithZeroPoint() {
        val scores = post("int8", Quantization(1.0 / 256, -128)).scores(byteArrayOf(-128, -64, 127, 0))
        assertEquals(listOf(0.0, 0.25, 255.0 / 256, 0.5), scores.toList())
    }

    @Test
    fun readsFloat32() {
        val b = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN)
        for (v in floatArrayOf(0.1f, 0.2f, 0.3f, 0.4f)) b.putFloat(v)
        val top = post("float32", null).topK(b.array(), 2)
        assertEquals(listOf(3, 2), top.map { it.index })
        assertEquals(listOf("fish", "bird"), top.map { it.label })
        assertEquals(0.4f.toDouble(), top[0].score, 0.0)
    }

    @Test
    fun tiesKeepLabelOrder() {
        val top = post("uint8", Quantization(1.0 / 256, 0)).topK(byteArrayOf(3, 9, 9, 3), 4)
        assertEquals(listOf(1, 2, 0, 3), top.map { it.index })
    }

    @Test
    fun logitsGetSoftmax() {
        val b = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN)
        for (v in floatArrayOf(1f, 2f, 3f, 1000f)) b.putFloat(v)
        val logits = post("float32", null, OutputSpec("logits", null, 4))
        val stable = logits.scores(b.array())
        assertEquals(1.0, stable[3], 1e-12) // no overflow from exp(1000)
        val small = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN)
        for (v in floatArrayOf(1f, 2f, 3f, 4f)) small.putFloat(v)
        val scores = logits.scores(small.array())
        assertEquals(1.0, scores.sum(), 1e-12)
        assertEquals(Math.exp(-1.0), scores[1] / scores[2], 1e-12)
    }

    @Test
    fun topKNeverExceedsTheClassCount() {
        assertEquals(4, TopK.select(doubleArrayOf(0.1, 0.2, 0.3, 0.4), labels, 10).size)
        assertEquals("class 4", TopK.select(doubleArrayOf(0.0, 0.0, 0.0, 0.0, 1.0), labels, 1)[0].label)
    }

    @Test
    fun wrongOutputSizeIsReported() {
        try {
            post("float32", null).scores(ByteArray(12))
            fail("a 3-float output was accepted for 4 classes")
        } catch (e: IllegalArgumentException) {
            assertEquals("output tensor 1x4 float32 needs 16 bytes, got 12", e.message)
        }
    }
}
