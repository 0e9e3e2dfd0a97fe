<?php
// The legacy site's 404. The status code is what matters to fallthrough:
// with fallbackOn: [404] the request is replayed to the new Python app.
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
http_response_code(404);
page_start('Not found');
?>
<div class="notfound">
  <h1>Not found (legacy PHP)</h1>
  <p>The legacy PHP site has no page at <code><?= h($path) ?></code>.</p>
</div>
<?php
page_end();
