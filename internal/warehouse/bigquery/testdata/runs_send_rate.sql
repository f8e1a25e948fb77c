SELECT send_rate
FROM `acme-prod`.`activations`.`runs`
WHERE send_budget = @send_budget AND send_rate > 0 AND `at` >= @since
ORDER BY `at` DESC
LIMIT 1
