"""What a learner or a teacher uses: `assess` one recording (scores, word and phone feedback),
`serve` the web page and its API, and the self-contained `demo`.
"""
