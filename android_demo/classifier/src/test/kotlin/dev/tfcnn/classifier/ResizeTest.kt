package dev.tfcnn.classifier

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.util.Random

/** Properties of [Resizer] that hold whatever Python says; the byte-exact check is PhotoGoldenTest. */
class ResizeTest {
    private fun argb(r: Int, g: Int, b: Int, a: Int = 255): Int = (a shl 24) or (r shl 16) or (g shl 8) or b

    private fun random(n: Int, seed: Long, opaque: Boolean = true): IntArray {
        val rng = Random(seed)
        return IntArray(n) { val p = rng.nextInt(); if (opaque) p or (0xFF shl 24) else p }
    }

    @Test
    fun sameSizeOpaqueIsUntouched() {
        val px = random(5 * 4, 1)
        for (fit in Fit.values()) assertArrayEquals(px, Resizer(5, 4, fit).resize(px, 5, 4))
    }

    @Test
    fun alphaIsCompositedOverBlackAndTheResultIsOpaque() {
        val px = intArrayOf(argb(255, 64, 0, 128), argb(200, 100, 50, 0), argb(10, 20, 30, 255), argb(255, 255, 255, 1))
        val out = Resizer(2, 2).resize(px, 2, 2)
        // round(c * a / 255): 255*128/255 = 128, 64*128/255 = 32.1 -> 32; transparent -> black
        assertArrayEquals(intArrayOf(argb(128, 32, 0), argb(0, 0, 0), argb(10, 20, 30), argb(1, 1, 1)), out)
        assertArrayEquals(out, Resizer.overBlack(px))
    }

    @Test
    fun constantImagesStayConstantAtAnySize() {
        val colour = argb(127, 58, 16)
        for ((w, h) in listOf(37 to 23, 3 to 90, 1 to 1, 200 to 7)) {
            for (fit in Fit.values()) {
                val out = Resizer(16, 12, fit).resize(IntArray(w * h) { colour }, w, h)
                assertTrue("${w}x$h ${fit.key}", out.all { it == colour })
            }
        }
    }

    @Test
    fun shrinkingAveragesEveryPixel() {
        // A one-pixel checkerboard: point-sampling bilinear (createScaledBitmap, TF without
        // antialias) lands on single pixels and returns near 0 or 255; Pillow's widened
        // triangle filter averages them to mid-grey.
        val n = 64
        val board = IntArray(n * n) { if ((it % n + it / n) % 2 == 0) argb(255, 255, 255) else argb(0, 0, 0) }
        val out = Resizer(8, 8).resize(board, n, n)
        for (p in out) {
            val v = p and 0xFF
            assertTrue("checkerboard shrunk to $v", v in 120..135)
        }
    }

    @Test
    fun centerCropBoxIsImageOpsFits() {
        assertArrayEquals(doubleArrayOf(10.0, 0.0, 50.0, 40.0), Resizer.cropBox(60, 40, 28, 28, Fit.CENTER_CROP), 0.0)
        assertArrayEquals(doubleArrayOf(0.0, 11.0, 30.0, 41.0), Resizer.cropBox(30, 52, 16, 16, Fit.CENTER_CROP), 0.0)
        // 90x9 to 28x16: width 1.75 * 9 = 15.75, left (90 - 15.75) / 2
        assertArrayEquals(doubleArrayOf(37.125, 0.0, 52.875, 9.0), Resizer.cropBox(90, 9, 28, 16, Fit.CENTER_CROP), 0.0)
        assertArrayEquals(doubleArrayOf(0.0, 0.0, 90.0, 9.0), Resizer.cropBox(90, 9, 28, 16, Fit.STRETCH), 0.0)
    }

    @Test
    fun centerCropKeepsTheMiddleAndStretchKeepsEverything() {
        // 30x10: red | green | blue thirds. Cropped to 10x10 only green is left (an integer crop:
        // copied, as Pillow does); stretched, all three colours survive.
        val px = IntArray(30 * 10) { i -> when ((i % 30) / 10) { 0 -> argb(255, 0, 0); 1 -> argb(0, 255, 0); else -> argb(0, 0, 255) } }
        val cropped = Resizer(10, 10, Fit.CENTER_CROP).resize(px, 30, 10)
        assertTrue(cropped.all { it == argb(0, 255, 0) })
        val stretched = Resizer(10, 10, Fit.STRETCH).resize(px, 30, 10)
        assertEquals(argb(255, 0, 0), stretched[0])
        assertEquals(argb(0, 0, 255), stretched[9])
    }

    @Test
    fun rowsTheFilterDoesNotReachAreNeverRead() {
        val w = 10
        val h = 100
        val px = random(w * h, 2)
        val asked = ArrayList<Int>()
        val rows = Resizer(10, 10, Fit.CENTER_CROP).resize(w, h) { y, row ->
            asked.add(y)
            System.arraycopy(px, y * w, row, 0, w)
        }
        assertEquals((45 until 55).toList(), asked)
        assertArrayEquals(rows, Resizer(10, 10, Fit.CENTER_CROP).resize(px, w, h))
    }

    @Test
    fun badSizesAreRefused() {
        try {
            Resizer(4, 4).resize(IntArray(5), 2, 3)
            fail("5 pixels accepted as a 2x3 image")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("got 5 pixels for a 2x3 image"))
        }
        try {
            Resizer(0, 4)
            fail("a 0x4 target was accepted")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message.orEmpty(), e.message.orEmpty().contains("at least 1x1"))
        }
    }
}
