<?php
// GET shows the form; POST echoes back what was posted.
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
page_start('Contact us');

if (($_SERVER['REQUEST_METHOD'] ?? 'GET') === 'POST'):
    $name = trim((string) ($_POST['name'] ?? ''));
    $message = trim((string) ($_POST['message'] ?? ''));
?>
<h1>Thank you<?= $name !== '' ? ', ' . h($name) : '' ?></h1>
<p>Legacy PHP received your message:</p>
<blockquote id="message"><?= nl2br(h($message)) ?></blockquote>
<p>Received fields:</p>
<ul>
<?php foreach ($_POST as $field => $value): ?>
  <li><code><?= h((string) $field) ?></code> = <code><?= h(is_array($value) ? implode(', ', $value) : (string) $value) ?></code></li>
<?php endforeach; ?>
</ul>
<p>This reply is served by legacy PHP.</p>
<?php else: ?>
<h1>Contact us</h1>
<form method="post" action="/contact.php">
  <p><label>Your name <input name="name"></label></p>
  <p><label>Message<br><textarea name="message" rows="5" cols="40"></textarea></label></p>
  <p><button type="submit">Send</button></p>
</form>
<p>This form is served by legacy PHP.</p>
<?php endif;

page_end();
