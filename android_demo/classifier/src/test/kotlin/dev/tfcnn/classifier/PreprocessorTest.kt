package dev.tfcnn.classifier

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder

class PreprocessorTest {
    private fun argb(r: Int, g: Int, b: Int): Int = (0xFF shl 24) or (r shl 16) or (g shl 8) or b
    private val pixels = intArrayOf(argb(0, 128, 255), argb(10, 20, 30), argb(255, 255, 255), argb(1, 2, 3))

    private fun prep(contract: String, dtype: String, channels: Int = 3, quant: Quantization? = null): Preprocessor {
        val c = Contract.parse(contract)
        return Preprocessor(c.input, TensorSpec("image", intArrayOf(1, 2, 2, channels), dtype, quant), ByteOrder.LITTLE_ENDIAN)
    }

    @Test
    fun uint8RgbIsThePixelBytesInRowOrder() {
        val bytes = prep(contractJson(), "uint8").toInputBytes(pixels, 2, 2)
        val expected = intArrayOf(0, 128, 255, 10, 20, 30, 255, 255, 255, 1, 2, 3)
        assertArrayEquals(expected, bytes.map { it.toInt() and 0xFF }.toIntArray())
    }

    @Test
    fun alphaIsIgnored() {
        val translucent = pixels.map { it and 0x00FFFFFF or (0x40 shl 24) }.toIntArray()
        val p = prep(contractJson(), "uint8")
        assertArrayEquals(p.toInputBytes(pixels, 2, 2), p.toInputBytes(translucent, 2, 2))
    }

    @Test
    fun float32NormalizesWhenNotInGraph() {
        val p = prep(contractJson(dtype = "float32", inGraph = false, mean = "[1.0, 2.0, 3.0]", std = "[2.0, 4.0, 0.5]"), "float32")
        val buffer = ByteBuffer.wrap(p.toInputBytes(pixels, 2, 2)).order(ByteOrder.LITTLE_ENDIAN)
        assertEquals((0.0 - 1.0) / 2.0, buffer.getFloat(0).toDouble(), 0.0)
        assertEquals(((128.0 - 2.0) / 4.0).toFloat(), buffer.getFloat(4), 0f)
        assertEquals(((255.0 - 3.0) / 0.5).toFloat(), buffer.getFloat(8), 0f)
        assertEquals(48, buffer.capacity())
    }

    @Test
    fun float32KeepsRawValuesWhenNormalizationIsInGraph() {
        val p = prep(contractJson(dtype = "float32"), "float32")
        val buffer = ByteBuffer.wrap(p.toInputBytes(pixels, 2, 2)).order(ByteOrder.LITTLE_ENDIAN)
        assertEquals(128f, buffer.getFloat(4), 0f)
        assertEquals(255f, buffer.getFloat(8), 0f)
    }

    @Test
    fun int8QuantizesRoundsHalfAwayAndClamps() {
        // normalized v = (x - 127.5) / 127.5, then q = round(v / (1/128)) + 0 clamped to [-128, 127]
        val p = prep(
            contractJson(dtype = "int8", inGraph = false, mean = "[127.5]", std = "[127.5]"),
            "int8", 3, Quantization(1.0 / 128, 0)
        )
        val q = p.toInputBytes(pixels, 2, 2).map { it.toInt() }
        val expected = pixels.flatMap { px -> listOf((px shr 16) and 0xFF, (px shr 8) and 0xFF, px and 0xFF) }.map { x ->
            val v = (x - 127.5) / 127.5 * 128
            val r = if (v >= 0) Math.floor(v + 0.5) else -Math.floor(-v + 0.5)
            Math.max(-128.0, Math.min(127.0, r)).toInt()
        }
        assertEquals(expected, q)
        assertEquals(-128, q[0])
        assertEquals(127, q[2])
    }

    @Test
    fun uint8WithZeroPointAndHalfwayValues() {
        assertEquals(3, Preprocessor.quantize(2.5, null, 0, 255))
        assertEquals(-3, Preprocessor.quantize(-2.5, null, -128, 127))
        assertEquals(255, Preprocessor.quantize(300.0, null, 0, 255))
        assertEquals(0, Preprocessor.quantize(-1.0, null, 0, 255))
        assertEquals(133, Preprocessor.quantize(1.0, Quantization(0.2, 128), 0, 255))
        assertEquals(-128, Preprocessor.quantize(-1e9, Quantization(0.5, -1), -128, 127))
    }

    @Test
    fun singleChannelTensorGetsBt601Luma() {
        val p = prep(contractJson(channels = 1, dtype = "float32"), "float32", channels = 1)
        val buffer = ByteBuffer.wrap(p.toInputBytes(pixels, 2, 2)).order(ByteOrder.LITTLE_ENDIAN)
        assertEquals((0.299 * 0 + 0.587 * 128 + 0.114 * 255).toFloat(), buffer.getFloat(0), 0f)
        assertEquals(255f, buffer.getFloat(8), 1e-4f)
        assertEquals(16, buffer.capacity())
    }

    @Test
    fun wrongSizeNamesTheResizeToDo() {
        val p = prep(contractJson(), "uint8")
        try {
            p.toInputBytes(IntArray(9), 3, 3)
            fail("a 3x3 image was accepted by a 2x2 model")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("image is 3x3 but the model input is 1x2x2x3"))
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("Resizer(2, 2, fit)"))
        }
    }

    @Test
    fun meanWithWrongChannelCountIsRejected() {
        try {
            prep(contractJson(dtype = "float32", inGraph = false, mean = "[1.0, 2.0]", std = "[1.0]"), "float32")
            fail("two means for three channels were accepted")
        } catch (e: ContractException) {
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("input.normalization.mean has 2 values"))
        }
    }
}
