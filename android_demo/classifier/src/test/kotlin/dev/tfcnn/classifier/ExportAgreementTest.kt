package dev.tfcnn.classifier

import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File

/**
 * The app must run the model the export describes. Both checks compare against the model tensors
 * recorded in golden.json (the model the app ships), so they need no model file:
 *  - -Dtfcnn.assets.dir=app/src/main/assets: the app's contract.json, labels.txt (and model.tflite's
 *    sha256 when present) agree with the goldens;
 *  - -Dtfcnn.export.dir=export/NAME/VERSION: the export's contract.json, labels.txt and model card
 *    still describe the app's model (fails after a re-export that was not copied into the app).
 */
class ExportAgreementTest {
    private val golden = Golden.load()

    private fun dir(property: String): File? {
        val value = System.getProperty(property)
        return if (value == null || value.isBlank()) null else File(value)
    }

    @Test
    fun appAssetsMatchTheGoldens() {
        val assets = dir("tfcnn.assets.dir")
        assumeTrue(
            "no app assets to check (set -Dtfcnn.assets.dir to a folder with contract.json, written by tfcnn export --android)",
            assets != null && File(assets, "contract.json").isFile
        )
        val contractFile = File(assets, "contract.json")
        val contract = Contract.parse(contractFile.readText(), contractFile.path)
        val labels = Labels.parse(File(assets, "labels.txt").readText())
        val problems = ModelSpec.check(contract, labels, golden.input, golden.output, golden.modelSha256).map { it.message }.toMutableList()
        val model = File(assets, "model.tflite")
        if (model.isFile) {
            val sha = ImageClassifier.sha256(model.readBytes())
            if (sha != golden.modelSha256) {
                problems.add("model_sha256: $model is ${sha.take(12)}... but ${golden.where} was recorded with ${golden.modelSha256.take(12)}...")
            }
        }
        if (problems.isNotEmpty()) {
            throw AssertionError("$assets disagrees with ${golden.where}: ${problems.joinToString("; ")}")
        }
        println("ExportAgreementTest: app assets in $assets agree with ${golden.where}")
    }

    @Test
    fun appModelMatchesTheExport() {
        val export = dir("tfcnn.export.dir")
        assumeTrue("no export to compare with (set -Dtfcnn.export.dir=export/NAME/VERSION)", export != null)
        val file = File(export, "contract.json")
        if (!file.isFile) throw AssertionError("$file is missing; is -Dtfcnn.export.dir an export version directory?")
        val exported = Contract.parse(file.readText(), file.path)
        val app = golden.contract.android ?: throw AssertionError("${golden.where}: contract has no android block")
        val asShipped = Contract(
            exported.schema, exported.modelName, exported.modelVersion, exported.input, exported.output,
            exported.labels, exported.artifacts, AndroidInfo(app.variant, app.modelFile, null, null)
        )
        val labels = Labels.parse(File(export, "labels.txt").readText())
        val problems = ModelSpec.check(asShipped, labels, golden.input, golden.output).map { it.message }.toMutableList()
        if (exported.labels != golden.labels) problems.add("labels.names: the export's labels differ from the app's")
        val art = exported.artifact(app.variant)
        val card = File(export, "model_card.json")
        if (art != null && card.isFile) {
            val entries = JsonNode.parse(card.readText(), card.path)["artifacts"].list()
            val entry = entries.firstOrNull { it["path"].string() == art.file }
            val sha = entry?.get("sha256")?.string()
            if (sha == null) {
                problems.add("model_card.json artifacts has no sha256 for ${art.file}")
            } else if (sha != golden.modelSha256) {
                problems.add("model_card.json artifacts[${art.file}].sha256: export is ${sha.take(12)}... but the app's model.tflite is ${golden.modelSha256.take(12)}...")
            }
        }
        if (problems.isNotEmpty()) {
            throw AssertionError(
                "the app's model (recorded in ${golden.where}) does not match the export in $export: " +
                    problems.joinToString("; ") + "; run `tfcnn export RUN_DIR --android android_demo`"
            )
        }
        println("ExportAgreementTest: the app's model matches the export in $export")
    }
}
