package dev.tfcnn.classifier

/** One disagreement between contract.json, labels.txt and the model; [field] is the contract field to look at. */
class SpecIssue(val field: String, val message: String) {
    override fun toString(): String = message
}

/** The model, contract and labels disagree; the message lists every issue, each naming its field. */
class ModelMismatchException(val issues: List<SpecIssue>) :
    RuntimeException(issues.joinToString("; ") + "; re-run `tfcnn export RUN_DIR --android android_demo` and rebuild the app")

/**
 * Compares what contract.json promises with the tensors the runtime actually reports, before the
 * first inference, so a stale or swapped model.tflite is reported instead of producing nonsense.
 */
object ModelSpec {
    fun check(
        contract: Contract,
        labels: List<String>,
        input: TensorSpec,
        output: TensorSpec,
        modelSha256: String? = null
    ): List<SpecIssue> {
        val issues = ArrayList<SpecIssue>()
        val want = contract.input.shape
        val got = input.shape
        if (got.size != 4) {
            issues.add(SpecIssue("input", "input: model input is ${input.dims} but contract.json says ${TensorSpec.dimsOf(want)} (NHWC)"))
        } else {
            val names = arrayOf("input.batch", "input.height", "input.width", "input.channels")
            val fields = names.indices.filter { got[it] != want[it] }.map { names[it] }
            if (fields.isNotEmpty()) {
                issues.add(
                    SpecIssue(
                        fields[0],
                        "${fields.joinToString(", ")}: model input is ${input.dims} but contract.json says ${TensorSpec.dimsOf(want)}"
                    )
                )
            }
        }
        if (input.dtype != contract.input.dtype) {
            issues.add(SpecIssue("input.dtype", "input.dtype: model input is ${input.dtype} but contract.json says ${contract.input.dtype}"))
        }
        if (input.dtype !in SUPPORTED) {
            issues.add(SpecIssue("input.dtype", "input.dtype: model input is ${input.dtype}; the app feeds float32, uint8 or int8"))
        }
        val norm = contract.input.normalization
        if (!norm.inGraph && input.dtype != "float32" && input.quantization == null) {
            issues.add(
                SpecIssue(
                    "input.normalization.in_graph",
                    "input.normalization.in_graph: false needs a float32 or quantized input, but the model input is plain ${input.dtype}"
                )
            )
        }
        val channels = if (got.size == 4) got[3] else contract.input.channels
        if (!norm.inGraph) {
            for ((name, values) in listOf("mean" to norm.mean, "std" to norm.std)) {
                if (values.size != 1 && values.size != channels) {
                    issues.add(
                        SpecIssue(
                            "input.normalization.$name",
                            "input.normalization.$name: ${values.size} values for a $channels-channel model input"
                        )
                    )
                }
            }
        }

        val n = output.elementCount
        val shapeOk = output.shape.isNotEmpty() && output.shape[output.shape.size - 1] == n
        if (!shapeOk || n != contract.output.numClasses) {
            issues.add(
                SpecIssue(
                    "output.num_classes",
                    "output.num_classes: model output is ${output.dims} but contract.json says ${contract.output.numClasses} classes"
                )
            )
        }
        if (output.dtype !in SUPPORTED) {
            issues.add(SpecIssue("output.dtype", "output dtype: model output is ${output.dtype}; the app reads float32, uint8 or int8"))
        }

        val android = contract.android
        if (android != null) {
            val art = contract.artifact(android.variant)
            if (art == null) {
                issues.add(
                    SpecIssue(
                        "android.variant",
                        "android.variant: contract.json names \"${android.variant}\" but has no such artifact (has ${contract.artifacts.keys.joinToString(", ")})"
                    )
                )
            } else {
                compareTensor("artifacts.${android.variant}.inputs[0]", art.inputs, input, issues)
                compareTensor("artifacts.${android.variant}.outputs[0]", art.outputs, output, issues)
            }
            val declared = android.sha256
            if (modelSha256 != null && declared != null && !declared.equals(modelSha256, ignoreCase = true)) {
                issues.add(
                    SpecIssue(
                        "android.sha256",
                        "android.sha256: model.tflite is ${modelSha256.take(12)}... but contract.json says ${declared.take(12)}..."
                    )
                )
            }
        }

        if (labels.size != n) {
            issues.add(SpecIssue("labels", "labels.txt has ${labels.size} labels but the model outputs $n scores"))
        }
        if (contract.labels.isNotEmpty() && contract.labels != labels) {
            val i = firstDifference(contract.labels, labels)
            issues.add(
                SpecIssue(
                    "labels.names",
                    "labels.names: contract.json and labels.txt differ at label $i (${quoted(contract.labels, i)} vs ${quoted(labels, i)})"
                )
            )
        }
        return issues
    }

    /** Throws [ModelMismatchException] listing every issue, or returns when contract, labels and model agree. */
    fun require(contract: Contract, labels: List<String>, input: TensorSpec, output: TensorSpec, modelSha256: String? = null) {
        val issues = check(contract, labels, input, output, modelSha256)
        if (issues.isNotEmpty()) throw ModelMismatchException(issues)
    }

    private val SUPPORTED = setOf("float32", "uint8", "int8")

    private fun compareTensor(field: String, declared: List<TensorSpec>, actual: TensorSpec, issues: MutableList<SpecIssue>) {
        if (declared.isEmpty()) {
            issues.add(SpecIssue(field, "$field: contract.json does not record this tensor"))
            return
        }
        val d = declared[0]
        if (!d.shape.contentEquals(actual.shape)) {
            issues.add(SpecIssue("$field.shape", "$field.shape: model has ${actual.dims} but contract.json says ${d.dims}"))
        }
        if (d.dtype != actual.dtype) {
            issues.add(SpecIssue("$field.dtype", "$field.dtype: model has ${actual.dtype} but contract.json says ${d.dtype}"))
        }
        if (!Quantization.same(d.quantization, actual.quantization)) {
            issues.add(
                SpecIssue(
                    "$field.quantization",
                    "$field.quantization: model has ${actual.quantization ?: "none"} but contract.json says ${d.quantization ?: "none"}"
                )
            )
        }
    }

    private fun firstDifference(a: List<String>, b: List<String>): Int {
        var i = 0
        while (i < a.size && i < b.size && a[i] == b[i]) i++
        return i
    }

    private fun quoted(list: List<String>, i: Int): String = if (i < list.size) "\"${list[i]}\"" else "none"
}
