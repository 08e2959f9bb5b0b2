package dev.tfcnn.classifier

/** How a photo of another aspect ratio meets the model's width x height (contract.json `input.fit`). */
enum class Fit(val key: String) {
    /** The whole image, scaled to width x height (what tfcnn does to training images). */
    STRETCH("stretch"),

    /** The largest centred box of the model's aspect ratio (Pillow's `ImageOps.fit`), the rest cut off. */
    CENTER_CROP("center_crop");

    companion object {
        fun parse(value: String, source: String = "contract.json"): Fit =
            values().firstOrNull { it.key == value }
                ?: throw ContractException("$source: input.fit is \"$value\"; the app supports ${values().joinToString(" and ") { it.key }}")
    }
}

/**
 * The contract's resize, bit for bit what the Python side computes (`tfcnn.data.images.load_image`:
 * the folder source's training images, `tfcnn predict` and the golden tensors all go through it).
 *
 * 1. Alpha: every pixel is composited over black, `c' = (c * a + 127) / 255` (integer maths,
 *    i.e. round(c * a / 255)), before anything else; the result is opaque. [argb] must be straight
 *    (un-premultiplied) ARGB, which `Bitmap.getPixels` returns from a bitmap decoded with
 *    `inPremultiplied = false` and `javax.imageio` returns for PNGs.
 * 2. The source box: the whole image ([Fit.STRETCH]) or the centred box `ImageOps.fit` computes
 *    ([Fit.CENTER_CROP], sub-pixel, in double, then passed to Pillow as C floats, as here).
 * 3. Pillow's `Image.resize(BILINEAR)` (libImaging/Resample.c) of that box, per channel: a
 *    triangle filter whose support grows with the downscale factor (so shrinking averages
 *    every source pixel instead of skipping some, unlike `createScaledBitmap` or TF's
 *    non-antialiased bilinear), weights normalised in double and rounded to 22-bit fixed point,
 *    integer accumulation from 2^21 (round half up), then >> 22 and clamping to 0..255. The
 *    horizontal pass runs first, each row rounded to uint8, then the vertical pass: Python pins
 *    that order, because Pillow's own choice of order changed in 13.0 and moves some pixels by 1.
 *
 * Every step is integer maths or IEEE double/float operations in the same order as the C code,
 * so the JVM (which never fuses a multiply-add) gives the same bytes as Pillow on x86-64.
 */
class Resizer(val width: Int, val height: Int, val fit: Fit = Fit.STRETCH) {
    init {
        if (width < 1 || height < 1) throw IllegalArgumentException("resize target must be at least 1x1, got ${width}x$height")
    }

    /** [argb]: [srcWidth] x [srcHeight] pixels row by row -> [width] x [height] opaque ARGB pixels. */
    fun resize(argb: IntArray, srcWidth: Int, srcHeight: Int): IntArray {
        if (srcWidth < 1 || srcHeight < 1 || argb.size != srcWidth * srcHeight) {
            throw IllegalArgumentException("got ${argb.size} pixels for a ${srcWidth}x$srcHeight image")
        }
        return resize(srcWidth, srcHeight) { y, row -> System.arraycopy(argb, y * srcWidth, row, 0, srcWidth) }
    }

    /**
     * Same, reading the source one row at a time: `rows(y, row)` must fill `row` (srcWidth pixels)
     * with row y, e.g. `bitmap.getPixels(row, 0, w, 0, y, w, 1)`, so a 12 MP photo never needs a
     * second full-size copy. Rows the filter does not reach (cropped away) are never asked for.
     */
    fun resize(srcWidth: Int, srcHeight: Int, rows: (Int, IntArray) -> Unit): IntArray {
        if (srcWidth < 1 || srcHeight < 1) throw IllegalArgumentException("image is ${srcWidth}x$srcHeight; nothing to resize")
        val box = cropBox(srcWidth, srcHeight, width, height, fit)
        // Pillow's C side receives the box as floats.
        val x0 = box[0].toFloat()
        val y0 = box[1].toFloat()
        val x1 = box[2].toFloat()
        val y1 = box[3].toFloat()

        // Pass 1: Image.resize((width, srcHeight), box=(x0, 0, x1, srcHeight)).
        val horizontal = Axis.of(srcWidth, width, x0, x1)
        // Pass 2: Image.resize((width, height), box=(0, y0, width, y1)) on the result.
        val vertical = Axis.of(srcHeight, height, y0, y1)
        val first = vertical.firstSource
        val last = vertical.lastSource
        val mid = IntArray(3 * width * (last - first))
        val line = IntArray(srcWidth)
        val rgb = IntArray(3 * srcWidth)
        for (y in first until last) {
            rows(y, line)
            for (x in 0 until srcWidth) {
                val p = line[x]
                val a = (p ushr 24) and 0xFF
                rgb[3 * x] = over(((p shr 16) and 0xFF), a)
                rgb[3 * x + 1] = over(((p shr 8) and 0xFF), a)
                rgb[3 * x + 2] = over((p and 0xFF), a)
            }
            horizontal.apply(rgb, 0, 3, mid, 3 * width * (y - first), 3)
        }
        val out = IntArray(width * height)
        val column = IntArray(last - first)
        val result = IntArray(height)
        for (c in 0 until 3 * width) {
            for (y in column.indices) column[y] = mid[3 * width * y + c]
            vertical.apply(column, -first, 1, result, 0, 1)
            val shift = 16 - 8 * (c % 3)
            val x = c / 3
            for (y in 0 until height) out[y * width + x] = out[y * width + x] or (result[y] shl shift)
        }
        for (i in out.indices) out[i] = out[i] or OPAQUE
        return out
    }

    /**
     * One axis of Pillow's resample: which source pixels and fixed-point weights make each output
     * pixel, or a plain copy when Pillow would not resample this axis at all.
     */
    private class Axis(
        val outSize: Int,
        /** Pillow copies instead: the box is whole and the same size, or an integer crop of the output's size. */
        val copyFrom: Int,
        val start: IntArray,
        val count: IntArray,
        val ksize: Int,
        val weights: IntArray
    ) {
        val firstSource: Int get() = if (copyFrom >= 0) copyFrom else start[0]
        val lastSource: Int get() = if (copyFrom >= 0) copyFrom + outSize else start[outSize - 1] + count[outSize - 1]

        /** out[o + i * step] for each output pixel i, from src[(s + j) * stride * ... ] per channel plane. */
        fun apply(src: IntArray, srcOffset: Int, channels: Int, dst: IntArray, dstOffset: Int, dstChannels: Int) {
            for (ch in 0 until channels) {
                for (i in 0 until outSize) {
                    val v = if (copyFrom >= 0) {
                        src[(copyFrom + i + srcOffset) * channels + ch]
                    } else {
                        var ss = 1 shl (PRECISION_BITS - 1)
                        val base = i * ksize
                        val s = start[i] + srcOffset
                        for (j in 0 until count[i]) ss += src[(s + j) * channels + ch] * weights[base + j]
                        clip8(ss)
                    }
                    dst[dstOffset + i * dstChannels + ch] = v
                }
            }
        }

        companion object {
            fun of(inSize: Int, outSize: Int, in0: Float, in1: Float): Axis {
                val whole = outSize == inSize && in0 == 0f && in1 == outSize.toFloat()
                val integerCrop = in0 - in0.toInt() == 0f && in1 - in0 == outSize.toFloat()
                if (whole || integerCrop) return Axis(outSize, in0.toInt(), IntArray(0), IntArray(0), 0, IntArray(0))
                return coefficients(inSize, in0, in1, outSize)
            }

            /** precompute_coeffs + normalize_coeffs_8bpc for the BILINEAR filter (support 1). */
            private fun coefficients(inSize: Int, in0: Float, in1: Float, outSize: Int): Axis {
                val scale = (in1 - in0).toDouble() / outSize
                val filterscale = if (scale < 1.0) 1.0 else scale
                val support = 1.0 * filterscale
                val ksize = Math.ceil(support).toInt() * 2 + 1
                val invFilterscale = 1.0 / filterscale
                val start = IntArray(outSize)
                val count = IntArray(outSize)
                val weights = IntArray(outSize * ksize)
                val k = DoubleArray(ksize)
                for (xx in 0 until outSize) {
                    val center = in0.toDouble() + (xx + 0.5) * scale
                    var ww = 0.0
                    var xmin = (center - support + 0.5).toInt()
                    if (xmin < 0) xmin = 0
                    var xmax = (center + support + 0.5).toInt()
                    if (xmax > inSize) xmax = inSize
                    xmax -= xmin
                    for (x in 0 until xmax) {
                        val w = triangle((x + xmin - center + 0.5) * invFilterscale)
                        k[x] = w
                        ww += w
                    }
                    if (ww != 0.0) {
                        for (x in 0 until xmax) k[x] /= ww
                    }
                    for (x in 0 until xmax) {
                        weights[xx * ksize + x] = if (k[x] < 0) (-0.5 + k[x] * (1 shl PRECISION_BITS)).toInt()
                        else (0.5 + k[x] * (1 shl PRECISION_BITS)).toInt()
                    }
                    start[xx] = xmin
                    count[xx] = if (xmax > 0) xmax else 0
                }
                return Axis(outSize, -1, start, count, ksize, weights)
            }

            private fun triangle(x: Double): Double {
                val t = if (x < 0.0) -x else x
                return if (t < 1.0) 1.0 - t else 0.0
            }

            private fun clip8(ss: Int): Int {
                val v = ss shr PRECISION_BITS
                return if (v < 0) 0 else if (v > 255) 255 else v
            }
        }
    }

    companion object {
        private const val PRECISION_BITS = 32 - 8 - 2
        private const val OPAQUE = 0xFF shl 24

        /** One straight-alpha channel value composited over black: round(c * a / 255). */
        fun over(c: Int, a: Int): Int = (c * a + 127) / 255

        /** Every pixel composited over black and made opaque (what the model sees at any size). */
        fun overBlack(argb: IntArray): IntArray = IntArray(argb.size) { i ->
            val p = argb[i]
            val a = (p ushr 24) and 0xFF
            OPAQUE or (over((p shr 16) and 0xFF, a) shl 16) or (over((p shr 8) and 0xFF, a) shl 8) or over(p and 0xFF, a)
        }

        /**
         * The source box (left, top, right, bottom) that becomes the output, in double: the whole
         * image, or `PIL.ImageOps.fit`'s centred box with the same operations in the same order.
         */
        fun cropBox(srcWidth: Int, srcHeight: Int, width: Int, height: Int, fit: Fit): DoubleArray {
            if (fit == Fit.STRETCH) return doubleArrayOf(0.0, 0.0, srcWidth.toDouble(), srcHeight.toDouble())
            val srcRatio = srcWidth.toDouble() / srcHeight
            val outRatio = width.toDouble() / height
            val cropW: Double
            val cropH: Double
            if (srcRatio == outRatio) {
                cropW = srcWidth.toDouble()
                cropH = srcHeight.toDouble()
            } else if (srcRatio >= outRatio) {
                cropW = outRatio * srcHeight
                cropH = srcHeight.toDouble()
            } else {
                cropW = srcWidth.toDouble()
                cropH = srcWidth / outRatio
            }
            val left = (srcWidth - cropW) * 0.5
            val top = (srcHeight - cropH) * 0.5
            return doubleArrayOf(left, top, left + cropW, top + cropH)
        }
    }
}
