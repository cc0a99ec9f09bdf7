// Helper for tools/make_tokenizer_fixtures.py: dumps the vocabularies and merges baked into the npm packages
// llama-tokenizer-js, mistral-tokenizer-js and llama3-tokenizer-js, and encodes a corpus with each package's own encoder.
//
//   node tools/tokenizer_fixtures.mjs <node_modules dir> <corpus.json> <out dir>
//
// writes <out dir>/<family>.vocab.json  {"vocab": [token strings by id], "merges": [[left, right], ...] in priority order}
//    and <out dir>/<family>.ids.json    [[ids of corpus[0]], [ids of corpus[1]], ...]
// for family in llama2, mistral, llama3.  Encoder settings (they match what the HF tokenizers do by default):
//   llama2 / mistral: encode(text, add_bos_token=true, add_preceding_space=true)  -> <s> + SentencePiece dummy prefix "▁"
//   llama3:           encode(text, {bos: true, eos: false})                      -> <|begin_of_text|>, no EOS
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [nodeModules, corpusFile, outDir] = process.argv.slice(2)
if (!outDir) { console.error('usage: node tokenizer_fixtures.mjs <node_modules> <corpus.json> <outdir>'); process.exit(2) }
const corpus = JSON.parse(fs.readFileSync(corpusFile, 'utf8'))
fs.mkdirSync(outDir, { recursive: true })

const load = async (pkg, file) => (await import(pathToFileURL(path.join(nodeModules, pkg, file)).href)).default

function mergesOf(tok, nBase) {
  // tok.merges: Map("left right" -> priority); rebuild the ordered pair list, checking every key splits unambiguously.
  const entries = [...tok.merges.entries()].sort((a, b) => a[1] - b[1])
  const vocab = new Set(tok.vocabById.slice(0, nBase))
  return entries.map(([key]) => {
    const parts = key.split(' ')
    if (parts.length !== 2 || !vocab.has(parts[0]) || !vocab.has(parts[1]) || !vocab.has(parts[0] + parts[1]))
      throw new Error('ambiguous or unknown merge: ' + JSON.stringify(key))
    return parts
  })
}

function dump(name, tok, nBase, encode) {
  const vocab = tok.vocabById.slice(0, nBase)
  if (new Set(vocab).size !== vocab.length) throw new Error(name + ': duplicate vocab entries')
  const merges = mergesOf(tok, nBase)
  fs.writeFileSync(path.join(outDir, name + '.vocab.json'), JSON.stringify({ vocab, merges }))
  const ids = corpus.map(encode)
  fs.writeFileSync(path.join(outDir, name + '.ids.json'), JSON.stringify(ids))
  console.log(`${name}: ${vocab.length} tokens, ${merges.length} merges, ${ids.length} strings encoded`)
}

const llama = await load('llama-tokenizer-js', 'llama-tokenizer.js')
dump('llama2', llama, llama.vocabById.length, s => llama.encode(s, true, true))

const mistral = await load('mistral-tokenizer-js', 'mistral-tokenizer.js')
dump('mistral', mistral, mistral.vocabById.length, s => mistral.encode(s, true, true))

const llama3 = await load('llama3-tokenizer-js', 'bundle/llama3-tokenizer-with-baked-data.js')
// vocabById = 128000 BPE tokens followed by the 256 special tokens the package appends itself
dump('llama3', llama3, 128000, s => llama3.encode(s, { bos: true, eos: false }))
