package dev.tfcnn.classifier

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.awt.image.BufferedImage
import java.awt.image.IndexColorModel
import java.io.ByteArrayInputStream
import java.nio.ByteOrder
import java.util.Base64
import javax.imageio.ImageIO

/**
 * The resize path a real photo takes: the golden PNGs (other sizes and aspect ratios, alpha, grey,
 * palette) decoded on the JVM with javax.imageio, resized by [Resizer] with both fits and turned
 * into tensor bytes by [Preprocessor], must equal what Python's `tfcnn.data.images.load_image`
 * and the exporter computed — exactly: the count of differing values is reported and must be 0.
 */
class PhotoGoldenTest {
    private val golden = Golden.load()

    /** Straight (un-premultiplied) ARGB of a PNG, from the raster's own samples. */
    private fun argbOf(name: String): BufferedImage =
        ImageIO.read(ByteArrayInputStream(golden.photoBytes(name))) ?: throw AssertionError("javax.imageio cannot decode $name")

    private fun pixels(img: BufferedImage): IntArray {
        val w = img.width
        val h = img.height
        val cm = img.colorModel
        // Palette entries are stored ARGB values: getRGB returns them as they are.
        if (cm is IndexColorModel) return img.getRGB(0, 0, w, h, null, 0, w)
        // Grey PNGs must not go through getRGB: Java treats CS_GRAY as linear and would brighten them.
        assertTrue("premultiplied PNG decode", !cm.isAlphaPremultiplied)
        val raster = img.raster
        for (size in raster.sampleModel.sampleSize) assertEquals("bits per sample", 8, size)
        val bands = raster.numBands
        val s = IntArray(bands)
        val out = IntArray(w * h)
        for (y in 0 until h) {
            for (x in 0 until w) {
                raster.getPixel(x, y, s)
                out[y * w + x] = when (bands) {
                    1 -> (0xFF shl 24) or (s[0] shl 16) or (s[0] shl 8) or s[0]
                    2 -> (s[1] shl 24) or (s[0] shl 16) or (s[0] shl 8) or s[0]
                    3 -> (0xFF shl 24) or (s[0] shl 16) or (s[1] shl 8) or s[2]
                    4 -> (s[3] shl 24) or (s[0] shl 16) or (s[1] shl 8) or s[2]
                    else -> throw AssertionError("a PNG with $bands bands")
                }
            }
        }
        return out
    }

    private fun rgbBytes(argb: IntArray): ByteArray {
        val out = ByteArray(argb.size * 3)
        for (i in argb.indices) {
            out[3 * i] = (argb[i] shr 16).toByte()
            out[3 * i + 1] = (argb[i] shr 8).toByte()
            out[3 * i + 2] = argb[i].toByte()
        }
        return out
    }

    /** "N of M values differ (max |d| = k, first at i)", or null when all are equal. */
    private fun differences(got: ByteArray, want: ByteArray, signed: Boolean): String? {
        if (got.size != want.size) return "${got.size} values but Python has ${want.size}"
        var n = 0
        var max = 0
        var first = -1
        for (i in want.indices) {
            val a = if (signed) got[i].toInt() else got[i].toInt() and 0xFF
            val b = if (signed) want[i].toInt() else want[i].toInt() and 0xFF
            if (a != b) {
                if (first < 0) first = i
                n++
                max = Math.max(max, Math.abs(a - b))
            }
        }
        return if (n == 0) null else "$n of ${want.size} values differ (max |d| = $max, first at index $first)"
    }

    @Test
    fun goldenHasPhotosOfOtherSizes() {
        assertTrue("${golden.where} has no photos: re-run `tfcnn export RUN_DIR --android android_demo`", golden.photos.size >= 4)
        val w = golden.contract.input.width
        val h = golden.contract.input.height
        val sizes = golden.photos.map { it["width"].int() to it["height"].int() }
        assertTrue("a photo larger than ${w}x$h: $sizes", sizes.any { it.first > w && it.second > h })
        assertTrue("a photo smaller than ${w}x$h: $sizes", sizes.any { it.first < w && it.second < h })
        assertTrue("a non-square photo: $sizes", sizes.any { it.first != it.second })
        assertTrue("a photo with alpha", golden.photos.any { it["mode"].string() in setOf("RGBA", "LA", "P") })
    }

    @Test
    fun resizeReproducesPythonForBothFits() {
        val w = golden.contract.input.width
        val h = golden.contract.input.height
        val report = ArrayList<String>()
        val problems = ArrayList<String>()
        for (p in golden.photos) {
            val name = p["file"].string()
            val img = argbOf(name)
            assertEquals("$name width", p["width"].int(), img.width)
            assertEquals("$name height", p["height"].int(), img.height)
            val argb = pixels(img)
            for (fit in Fit.values()) {
                val want = Base64.getDecoder().decode(p["resized_b64"][fit.key].string())
                val got = rgbBytes(Resizer(w, h, fit).resize(argb, img.width, img.height))
                val diff = differences(got, want, signed = false)
                report.add("$name ${img.width}x${img.height} ${p["mode"].string()} ${fit.key}: ${diff ?: "0 of ${want.size} values differ"}")
                if (diff != null) problems.add("$name ${fit.key}: $diff")
            }
        }
        println("photo resize vs Python (${golden.where}):\n  " + report.joinToString("\n  "))
        if (problems.isNotEmpty()) fail("resized pixels differ from Python: " + problems.joinToString("; "))
    }

    @Test
    fun photoTensorBytesAndTopKMatchPython() {
        val pre = Preprocessor(golden.contract.input, golden.input, ByteOrder.LITTLE_ENDIAN)
        val recordings = HashMap<String, ByteArray>()
        for (p in golden.photos) recordings[p["input_b64"].string()] = golden.outputBytes(p)
        val engine = RecordedEngine(golden.input, golden.output, recordings)
        val problems = ArrayList<String>()
        ImageClassifier(golden.contract, golden.labels, engine, golden.modelSha256, ByteOrder.LITTLE_ENDIAN).use { classifier ->
            for (p in golden.photos) {
                val name = p["file"].string()
                val img = argbOf(name)
                val argb = pixels(img)
                val resized = classifier.resizer.resize(argb, img.width, img.height)
                val got = pre.toInputBytes(resized, golden.contract.input.width, golden.contract.input.height)
                val want = Base64.getDecoder().decode(p["input_b64"].string())
                val diff = differences(got, want, signed = golden.input.dtype == "int8")
                if (diff != null) {
                    problems.add("$name input tensor (${golden.input.dtype}): $diff")
                    continue
                }
                // Row by row, as the app reads a Bitmap.
                val top = classifier.classify(img.width, img.height, golden.k) { y, row ->
                    System.arraycopy(argb, y * img.width, row, 0, img.width)
                }.top
                val expected = p["top_k"].list().map { "#${it["index"].int()} ${it["label"].string()}" }
                val actual = top.map { "#${it.index} ${it.label}" }
                if (expected != actual) problems.add("$name top-k $actual, Python $expected")
            }
        }
        if (problems.isNotEmpty()) fail(problems.joinToString("; "))
        assertEquals(golden.photos.size, engine.calls)
    }
}
